"""Cycles reference renders of the parity asset set (CPU, here): the ground truth Mitsuba is held to.

    python -m bench.render_parity_reference                 # reference settings, both seeds
    python -m bench.render_parity_reference --pack          # -> bench/data/render_parity/reference/

Reference settings are the render stage's defaults (Cycles 128 spp, OIDN denoised, 512 px,
Blackman-Harris 1 px, Filmic), rendered twice with two sampling seeds: seed 0 is the reference,
seed 1 measures Cycles' own noise floor (Cycles vs Cycles). At ~12-25 s per view on this 2-core
machine, only a subset of the 150 planned views is rendered (`VIEWS`, spread over the Hammersley
sequence: two below the equator, six above); the frames keep their plan names, so the cameras are
exactly those of a full render. Renders go to a work folder (not committed, resumable per asset);
`--pack` stores the seed-0 views compactly (lossless WebP, ~50 kB a view), their transforms.json and
the Cycles seconds per view in `reference/summary.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from bench import parity_assets

WORK = parity_assets.ROOT / "work"
VIEWS = (5, 24, 43, 62, 81, 100, 119, 138)
SEEDS = (0, 1)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render_reference(work: Path, views: tuple[int, ...], seeds: tuple[int, ...], params: dict, names: list[str]) -> None:
    from render.stages import RenderStage, resolve_asset

    for seed in seeds:
        stage = RenderStage(params=params, config={"threads": 2, "timeout_s": 7200, "seed": seed})
        stage.setup()
        try:
            for name in names:
                path, fmt = parity_assets.assets()[name]
                out = work / name / f"seed{seed}"
                if (out / "transforms.json").exists():
                    continue
                out.mkdir(parents=True, exist_ok=True)
                with resolve_asset(str(path), fmt) as (local, real_fmt):
                    t0 = time.perf_counter()
                    m = stage.render_to(local, real_fmt, sha256_of(path), str(out), views=list(views))
                (out / "metrics.json").write_text(json.dumps({**m, "wall_s": time.perf_counter() - t0}, indent=1,
                                                             default=str))
                print(f"{name} seed {seed}: {m['seconds_per_view']:.2f} s/view", flush=True)
        finally:
            stage.close()


def pack(work: Path, out: Path = parity_assets.ROOT / "reference") -> None:
    import os
    import shutil
    import statistics

    from PIL import Image

    rows = {}
    for m in sorted(work.glob("*/seed*/metrics.json")):
        rows[f"{m.parent.parent.name}/{m.parent.name}"] = json.loads(m.read_text())["seconds_per_view"]
    for d in sorted(work.glob("*/seed0")):
        dest = out / d.parent.name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(d / "transforms.json", dest / "transforms.json")
        for p in sorted(d.glob("*.png")):
            Image.open(p).save(dest / f"{p.stem}.webp", "WEBP", lossless=True, quality=100, method=4)
    (out / "summary.json").write_text(json.dumps({
        "cycles_cpu_s_per_view": statistics.median(rows.values()), "per_render_s_per_view": rows,
        "settings": "Cycles 128 spp, OIDN, 512 px, 2 threads; machine shared with other work (median)"}, indent=1))
    print(f"packed {len(rows)} renders into {out} ({sum(f.stat().st_size for f in out.rglob('*'))} bytes)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--views", default=",".join(map(str, VIEWS)))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--assets", default=",".join(parity_assets.CASES))
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--pack", action="store_true", help="store the compact reference data from the work folder")
    args = ap.parse_args(argv)
    if args.pack:
        pack(args.work)
        return 0
    params = {"samples": args.samples, "resolution": args.resolution, "denoise": True}
    render_reference(args.work, tuple(int(v) for v in args.views.split(",")),
                     tuple(int(s) for s in args.seeds.split(",")), params, args.assets.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
