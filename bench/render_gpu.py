"""GPU render tier: seconds per 150-view asset at 512 px, split by phase, across spp (Mitsuba 3).

    python3 -m bench.render_gpu                      # on the GPU machine (cuda_ad_rgb)
    python3 -m bench.render_gpu --device llvm --views 4 --resolution 64 --spp 4   # CPU smoke run

Per committed canonical asset (bench/data/render_parity/canonical/, made by Blender here):
read (GLB -> numpy), build (scene onto the device, BVH), render (all views, batch sensor launches,
synchronised), denoise (OptiX, per view), encode (Filmic LUT + 8-bit on the device), write (PNG
encode + files, thread pool). The first launch of each setting compiles kernels and is reported
apart (`first_call_s`); the figures are the second call. Next to them: Cycles' CPU seconds per view
measured here (the parity reference renders, 2 cores) and the published ~0.6 s per view of Cycles
on a data-centre GPU. GPU memory: device memory in use after the render, minus before the scene.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import package_versions, write_result
from render import cameras

ROOT = Path(__file__).resolve().parent / "data" / "render_parity"
"""The parity set's data (bench.parity_assets.ROOT; not imported: trimesh is not on the GPU machine)."""
CANONICAL = ROOT / "canonical"
PUBLISHED_CYCLES_GPU_S_PER_VIEW = 0.6


def cycles_cpu_seconds_per_view() -> float | None:
    p = ROOT / "reference" / "summary.json"
    if not p.is_file():
        return None
    return json.loads(p.read_text()).get("cycles_cpu_s_per_view")


def run_setting(eng_cls, settings, device: str, glb: Path, views, resolution: int, spp: int) -> dict:
    from render import mitsuba_engine as me
    from render.mitsuba_render import gpu_used_bytes, write_pngs

    eng = eng_cls(device, settings)
    c2w, fov = [v.c2w for v in views], [v.fov for v in views]
    first = None
    for call in range(2):
        g0 = gpu_used_bytes() if device == "cuda" else None
        loaded = eng.load(glb)
        t0 = time.perf_counter()
        batch = eng.render(loaded, c2w, fov, resolution=resolution, spp=spp, seed=call)
        t1 = time.perf_counter()
        g1 = gpu_used_bytes() if device == "cuda" else None
        u8 = me.quantize(me.to_display(batch.rgba))
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            nbytes = write_pngs(u8.cpu().numpy(), [cameras.view_name(i) for i in range(len(views))], Path(d))
        t3 = time.perf_counter()
        if call == 0:
            first = t3 - t0 + loaded.upload_s
    row = {"spp": spp, "denoise": settings.denoise, "views": len(views), "resolution": resolution,
           "read_s": loaded.read_s, "build_s": loaded.build_s, "render_s": batch.timings["render_s"],
           "denoise_s": batch.timings["denoise_s"], "encode_s": t2 - t1, "write_s": t3 - t2,
           "launches": batch.launches, "png_bytes": nbytes, "first_call_s": first,
           "gpu_mem_mb": (g1 - g0) / 2**20 if g0 is not None else None}
    row["total_s"] = row["read_s"] + row["build_s"] + (t1 - t0) + row["encode_s"] + row["write_s"]
    row["render_s_per_view"] = row["render_s"] / len(views)
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=("cuda", "llvm"))
    ap.add_argument("--views", type=int, default=cameras.FEATURE_VIEWS)
    ap.add_argument("--resolution", type=int, default=cameras.FEATURE_RESOLUTION)
    ap.add_argument("--spp", default="4,8,16,32,64")
    ap.add_argument("--denoise-spp", default="4,8,16", help="settings also run with the OptiX denoiser (cuda)")
    ap.add_argument("--assets", default="textured_gltf,metal_rough")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from render.mitsuba_engine import MitsubaEngine, Settings

    views = cameras.feature_plan(args.views, seed=0).views
    rows = []
    for name in args.assets.split(","):
        glb = CANONICAL / name / "model.glb"
        for spp in [int(s) for s in args.spp.split(",") if s]:
            rows.append({"asset": name, **run_setting(MitsubaEngine, Settings(), args.device, glb, views,
                                                      args.resolution, spp)})
        if args.device == "cuda":
            for spp in [int(s) for s in args.denoise_spp.split(",") if s]:
                rows.append({"asset": name, **run_setting(MitsubaEngine, Settings(denoise=True), args.device, glb,
                                                          views, args.resolution, spp)})
    cpu = cycles_cpu_seconds_per_view()
    figures = {
        "device": args.device,
        "versions_extra": package_versions(("mitsuba", "drjit")),
        "rows": rows,
        "cycles_cpu_s_per_view_here": cpu,
        "cycles_cpu_s_per_150_views_here": cpu * 150 if cpu else None,
        "published_cycles_gpu_s_per_view": PUBLISHED_CYCLES_GPU_S_PER_VIEW,
        "published_cycles_gpu_s_per_150_views": PUBLISHED_CYCLES_GPU_S_PER_VIEW * 150,
        "notes": ["total_s = read + build + render(+denoise) + encode + write for one asset; the Blender import "
                  "into the canonical form runs on a CPU node (canonical stage) and is not in it.",
                  "cameras: the 150-view feature plan (seed 0)."],
    }
    print(f"wrote {write_result('render_gpu' if args.device == 'cuda' else 'render_gpu_llvm_smoke', figures, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
