"""Render benchmarks: seconds per view at the reference and cheaper settings, and warm vs cold workers.

    python -m bench.render_bench                   # -> bench/results/render_bench.json
    python -m bench.render_bench --quick           # fewer views/assets, for a smoke run

Sections
  * `settings`: Cycles 512^2 at 128 spp (the reference), 32 and 16 spp, each with the OIDN denoiser
    on and off, and Workbench, on sample-like meshes (1.3k-tri sphere, 100k-tri sphere+torus) and a
    textured "rock" made here (displaced sphere, 40k tris, 1024^2 procedural texture). Only a few
    views each: the first view of an asset carries BVH/kernel/shader set-up, so it is reported apart.
  * `warm_vs_cold`: the same small assets rendered by one warm worker (bpy imported once) and by a
    fresh Blender process per asset (what `blender -b -P script` per asset costs, here
    `python -m render.worker` per asset), side by side in one run, at two cheap settings.
    Per-asset overhead = wall time per asset minus the time spent inside `render()` calls.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from bench.common import package_versions, write_result
from render.stages import RenderStage

THREADS = 2


def proc_cpu_s(pid: int | None) -> float:
    """user+system CPU seconds of a live process (0 if gone): robust to other load on the machine."""
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- assets -----------------------------------------------------------------------------------------
def textured_rock(path: Path, subdiv: int = 5, tex: int = 1024) -> Path:
    """A lumpy textured rock: icosphere displaced by smooth noise, spherical UVs, procedural texture."""
    rng = np.random.default_rng(7)
    m = trimesh.creation.icosphere(subdivisions=subdiv)
    v = m.vertices
    disp = np.zeros(len(v))
    for k in range(1, 7):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        disp += np.sin(k * 3.0 * (v @ d) + rng.uniform(0, 6.28)) / k
    m.vertices = v * (1.0 + 0.12 * disp[:, None])
    u = 0.5 + np.arctan2(v[:, 1], v[:, 0]) / (2 * np.pi)
    w = 0.5 + np.arcsin(np.clip(v[:, 2], -1, 1)) / np.pi
    yy, xx = np.mgrid[0:tex, 0:tex] / tex
    base = 0.5 + 0.25 * np.sin(40 * xx + 7 * np.sin(9 * yy)) * np.cos(31 * yy)
    noise = rng.random((tex // 8, tex // 8))
    noise = np.kron(noise, np.ones((8, 8)))
    img = np.stack([base * 0.9 + 0.1 * noise, base * 0.7 + 0.2 * noise, base * 0.5 + 0.1 * noise], -1)
    m.visual = trimesh.visual.TextureVisuals(uv=np.stack([u, w], 1),
                                             image=Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)))
    m.export(path)
    return path


def make_assets(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    small = {
        "sphere_1k": trimesh.creation.icosphere(subdivisions=3),
        "box": trimesh.creation.box(extents=[1.0, 0.6, 0.3]),
        "torus_3k": trimesh.creation.torus(1.0, 0.3, major_sections=64, minor_sections=24),
        "cone": trimesh.creation.cone(0.5, 1.2, sections=64),
        "capsule": trimesh.creation.capsule(height=1.0, radius=0.3),
        "cylinder": trimesh.creation.cylinder(0.4, 1.0, sections=48),
    }
    for k, m in small.items():
        out[k] = d / f"{k}.glb"
        m.export(out[k])
    big = trimesh.util.concatenate([trimesh.creation.icosphere(subdivisions=6),
                                    trimesh.creation.torus(1.5, 0.3, major_sections=160, minor_sections=64)])
    out["sphere_torus_100k"] = d / "sphere_torus_100k.glb"
    big.export(out["sphere_torus_100k"])
    out["textured_rock_40k"] = textured_rock(d / "textured_rock_40k.glb")
    return out


def n_tris(path: Path) -> int:
    return int(len(trimesh.load(path, force="mesh").faces))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- runs ---------------------------------------------------------------------------------------------
def per_view(stage: RenderStage, path: Path, out: Path) -> dict[str, Any]:
    c0 = proc_cpu_s(stage.worker.pid if stage.worker else None)
    t0 = time.perf_counter()
    m = stage.render_to(str(path), "glb", sha(path), str(out))
    wall = time.perf_counter() - t0
    return {"metrics": m, "wall_s": wall, "cpu_s": proc_cpu_s(stage.worker.pid) - c0}


def bench_settings(assets: dict[str, Path], tmp: Path, views: int, quick: bool) -> list[dict[str, Any]]:
    configs = [
        ("cycles_128spp_denoise (reference)", {"samples": 128, "denoise": True}),
        ("cycles_128spp_nodenoise", {"samples": 128, "denoise": False}),
        ("cycles_32spp_denoise", {"samples": 32, "denoise": True}),
        ("cycles_32spp_nodenoise", {"samples": 32, "denoise": False}),
        ("cycles_16spp_denoise", {"samples": 16, "denoise": True}),
        ("cycles_16spp_nodenoise", {"samples": 16, "denoise": False}),
        ("workbench", {"engine": "BLENDER_WORKBENCH"}),
    ]
    which = {
        "cycles_128spp_denoise (reference)": ["sphere_1k", "sphere_torus_100k", "textured_rock_40k"],
        "cycles_128spp_nodenoise": ["textured_rock_40k"],
    }
    if quick:
        configs = configs[-2:]
    rows = []
    for name, params in configs:
        stage = RenderStage(params={"resolution": 512, "num_views": views, **params},
                            config={"threads": THREADS, "timeout_s": 3600})
        stage.setup()
        try:
            for asset in which.get(name, ["sphere_1k", "textured_rock_40k"] if not quick else ["sphere_1k"]):
                r = per_view(stage, assets[asset], tmp / f"{name}-{asset}".replace(" ", "_"))
                m = r["metrics"]
                vs = m["settings"]
                rows.append({
                    "config": name, "asset": asset, "triangles": n_tris(assets[asset]),
                    "views": m["n_views"],
                    "first_view_s": round(m["first_view_s"], 3),
                    "later_views_mean_s": round((m["seconds_per_view"] * m["n_views"] - m["first_view_s"])
                                                / max(1, m["n_views"] - 1), 3) if m["n_views"] > 1 else None,
                    "mean_s_per_view": round(m["seconds_per_view"], 3),
                    "import_s": round(m["import_s"], 3),
                    "asset_wall_s": round(r["wall_s"], 3),
                    "blender_cpu_s_per_view": round(r["cpu_s"] / m["n_views"], 3),
                    "overhead_fraction_of_render": round(
                        (r["wall_s"] - m["seconds_per_view"] * m["n_views"]) / (m["seconds_per_view"] * m["n_views"]), 4),
                    "loadavg_after": loadavg(),
                    "settings": vs,
                })
                print(rows[-1], flush=True)
        finally:
            stage.close()
    return rows


def bench_warm_cold(assets: dict[str, Path], tmp: Path, params: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Render `names` with a warm worker and with a fresh process per asset, interleaved asset by
    asset (warm i, cold i, ...) so that both see the same background load on a shared machine."""
    res: dict[str, Any] = {"params": params, "assets": names, "loadavg_before": loadavg()}
    stages = {mode: RenderStage(params=params, config={"threads": THREADS, "timeout_s": 600,
                                                       "max_jobs_per_worker": 1 if mode == "cold" else 100000})
              for mode in ("warm", "cold")}
    t0 = time.perf_counter()
    stages["warm"].setup()
    start_s = time.perf_counter() - t0
    rec: dict[str, dict[str, list[float]]] = {m: {"wall": [], "render": [], "cpu": []} for m in stages}
    try:
        for i, n in enumerate(names):
            for mode, stage in stages.items():
                warm = mode == "warm"
                c0 = proc_cpu_s(stage.worker.pid) if warm else 0.0
                t0 = time.perf_counter()
                m = stage.render_to(str(assets[n]), "glb", sha(assets[n]), str(tmp / f"{mode}-{i}"))
                rec[mode]["wall"].append(time.perf_counter() - t0)
                rec[mode]["render"].append(m["seconds_per_view"] * m["n_views"])
                rec[mode]["cpu"].append(proc_cpu_s(stage.worker.pid) - c0)  # cold: whole process incl. start
    finally:
        for stage in stages.values():
            stage.close()
    for mode, r in rec.items():
        wall, render = statistics.mean(r["wall"]), statistics.mean(r["render"])
        res[mode] = {
            "wall_per_asset_s": round(wall, 3),
            "render_per_asset_s": round(render, 3),
            "overhead_per_asset_s": round(wall - render, 3),
            "overhead_fraction_of_render": round((wall - render) / render, 4),
            "blender_cpu_s_per_asset": round(statistics.mean(r["cpu"]), 3),
            "walls_s": [round(w, 3) for w in r["wall"]],
        }
    res["warm"]["worker_start_s"] = round(start_s, 3)
    res["warm"]["wall_per_asset_incl_start_s"] = round(statistics.mean(rec["warm"]["wall"]) + start_s / len(names), 3)
    res["speedup_warm_over_cold_wall"] = round(res["cold"]["wall_per_asset_s"] / res["warm"]["wall_per_asset_s"], 2)
    res["speedup_warm_over_cold_cpu"] = round(res["cold"]["blender_cpu_s_per_asset"]
                                              / res["warm"]["blender_cpu_s_per_asset"], 2)
    res["loadavg_after"] = loadavg()
    print(res, flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="render-bench-") as d:
        tmp = Path(d)
        assets = make_assets(tmp / "assets")
        small = ["sphere_1k", "box", "torus_3k", "cone", "capsule", "cylinder"]
        if args.quick:
            small = small[:2]
        load_start = loadavg()
        warm_cold = [
            bench_warm_cold(assets, tmp, {"engine": "BLENDER_WORKBENCH", "resolution": 256, "num_views": 4}, small),
            bench_warm_cold(assets, tmp, {"engine": "BLENDER_WORKBENCH", "resolution": 512, "num_views": 8}, small),
            bench_warm_cold(assets, tmp, {"samples": 16, "denoise": False, "resolution": 256, "num_views": 4}, small),
        ]
        settings = bench_settings(assets, tmp, 1 if args.quick else args.views, args.quick)
    figures = {
        "versions_extra": package_versions(("bpy", "pycollada", "pillow")),
        "threads": THREADS,
        "loadavg_at_start": load_start,
        "loadavg_at_end": loadavg(),
        "notes": [
            "CPU only (Cycles device CPU, 2 threads); OIDN is the only denoiser on this machine.",
            "first_view_s includes BVH build, kernel and shader set-up; later views reuse them "
            "(render.use_persistent_data on).",
            "cold = a fresh `python -m render.worker` process per asset (import bpy + first-render "
            "set-up every time), the equivalent of the reference's `blender -b -P` per asset.",
            "overhead = wall time per asset minus time inside render() calls (import, scene set-up, "
            "mesh export, process start for cold).",
            "On a shared machine wall-clock figures follow the background load (loadavg_* fields); "
            "blender_cpu_s_* (user+system CPU of the Blender child, from /proc) are the load-robust "
            "figures: on idle cores with Cycles' 2 threads, wall per view ~= CPU per view / 2.",
        ],
        "warm_vs_cold": warm_cold,
        "settings": settings,
    }
    path = write_result("render_bench", figures, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
