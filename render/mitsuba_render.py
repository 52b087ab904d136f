"""The MITSUBA engine behind the render stage contract: canonical form in, the render's files out.

Writes what the Cycles render writes, with the same names: one RGBA PNG per view (8-bit, straight
alpha, Filmic display values), transforms.json (same cameras, scale and offset: the planned
matrices and the canonical form's normalisation), and mesh.ply (the canonical one, same exporter as
the Cycles render). Metrics split the asset's cost into load (GLB read + scene upload), render,
denoise, encode (tone map + quantise on the device) and write (PNG encode + files), and name what
the canonical form or this engine could not carry (signals, not a silent grey).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from catalogs.stage import CorruptFile
from render import cameras
from render.gltf_read import GltfError
from render.mitsuba_engine import MitsubaEngine, Settings, quantize, to_display

PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNG views: fast; the files are read once by the feature stage."""


def engine_for(params) -> MitsubaEngine:
    from render.stages import MITSUBA_DEVICES  # noqa: PLC0415  (the Blender stage module, only when staged)

    settings = Settings(pixel_filter=params.pixel_filter, filter_width=params.filter_width, denoise=params.denoise)
    return MitsubaEngine(MITSUBA_DEVICES[params.device], settings)


def write_pngs(u8: np.ndarray, names: list[str], out_dir: Path, threads: int = 8) -> int:
    """Encode (V, H, W, 4) uint8 views as PNGs in parallel (zlib releases the GIL); bytes written."""
    def one(i: int) -> int:
        path = out_dir / names[i]
        Image.fromarray(u8[i], "RGBA").save(path, compress_level=PNG_COMPRESS_LEVEL)
        return path.stat().st_size

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return sum(pool.map(one, range(len(names))))


def gpu_used_bytes() -> int | None:
    """Device memory in use on the current GPU (all processes), or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def render_canonical(stage, files: dict[str, Path], plan: cameras.CameraPlan, which: list[int],
                     out_dir: Path) -> dict[str, Any]:
    p = stage.params
    eng: MitsubaEngine = stage.mitsuba
    record = json.loads(Path(files["canonical.json"]).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu0 = gpu_used_bytes() if eng.device == "cuda" else None
    t0 = time.perf_counter()
    try:
        loaded = eng.load(files["model.glb"], record.get("world_color"))
    except GltfError as exc:
        raise CorruptFile(f"canonical GLB unreadable: {exc}") from exc
    views = [plan.views[i] for i in which]
    batch = eng.render(loaded, [v.c2w for v in views], [v.fov for v in views], resolution=p.resolution,
                       spp=p.samples, seed=stage.sampling_seed)
    gpu1 = gpu_used_bytes() if eng.device == "cuda" else None
    t1 = time.perf_counter()
    u8 = quantize(to_display(batch.rgba))
    if eng.device == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    host = u8.cpu().numpy()
    names = [cameras.view_name(i) for i in which]
    nbytes = write_pngs(host, names, out_dir, threads=int(stage.config.get("png_threads", os.cpu_count() or 1)))
    shutil.copyfile(files["mesh.ply"], out_dir / "mesh.ply")
    settings = {"engine": "MITSUBA", "device": eng.device, "variant": eng.mi.variant(), "samples": p.samples,
                "denoise": p.denoise, "denoiser": "optix" if p.denoise else None, "resolution": p.resolution,
                "pixel_filter": p.pixel_filter, "filter_width": p.filter_width, "view_transform": "Filmic (measured LUT)",
                "integrator": str(loaded.scene.integrator()), "sampler": eng.settings.sampler,
                "mitsuba": _version(), "canonical_blender": record.get("blender")}
    tj = stage.transforms(plan, which, record["scale"], record["offset"], settings)
    cameras.write_transforms(out_dir / "transforms.json", tj)
    t3 = time.perf_counter()
    n = len(which)
    sig = dict(record.get("signals", {}))
    notes = loaded.notes
    return {
        "n_views": n,
        "seconds_per_view": batch.timings["render_s"] / n,
        "load_s": loaded.upload_s,
        "render_s": batch.timings["render_s"],
        "denoise_s": batch.timings["denoise_s"],
        "encode_s": t2 - t1,
        "write_s": t3 - t2,
        "asset_s": t3 - t0,
        "launches": batch.launches,
        "png_bytes": nbytes,
        "gpu_mem_delta_mb": (gpu1 - gpu0) / 2**20 if gpu0 is not None and gpu1 is not None else None,
        "scale": record["scale"],
        "engine_dropped": notes[:20],
        "n_engine_dropped": len(notes),
        "uncarried_area_fraction": record.get("uncarried_area_fraction", 0.0),
        "n_uncarried_materials": record.get("n_uncarried_materials", 0),
        "world_carried": record.get("world_carried", True),
        "view_transform_carried": record.get("view_transform_carried", True),
        **sig,
        "settings": settings,
    }


def _version() -> str:
    import mitsuba

    return str(getattr(mitsuba, "__version__", "?"))
