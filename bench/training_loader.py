"""Loader throughput: SLat samples/s per core from a local store (one npz per asset) and from packed
Arrow shards (memory-mapped), through SLatDataset (+ normalisation) and sparse collation.

    python -m bench.training_loader            # -> bench/results/training_loader.json
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def _rate(ds, batch: int, seconds: float, collate) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        collate([ds[(n + i) % len(ds)] for i in range(batch)])
        n += batch
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=48)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    from bench.common import metadata, write_result
    from catalogs.catalog import Catalog
    from catalogs.store import Store
    from trellis_core.data import SLatDataset, SSLatentDataset, build_manifest, collate_dense, collate_sparse, write_shards
    from trellis_core.data.synthetic import SLAT_MODEL, SS_MODEL, write_demo_dataset

    torch.set_num_threads(1)
    d = tempfile.mkdtemp(prefix="loader-bench-")
    store, cat = Store(d + "/store"), Catalog(d + "/catalog.duckdb")
    write_demo_dataset(store, cat, n_assets=a.assets, size_range=(0.15, 0.42), n_views=1, image_size=32)
    t0 = time.perf_counter()
    m = build_manifest(cat, "SELECT sha256 FROM metadata", store.url, {"slat": SLAT_MODEL, "ss_latent": SS_MODEL})
    manifest_s = time.perf_counter() - t0
    shards = Store(d + "/packed")
    t0 = time.perf_counter()
    sm = write_shards(m, shards, "slat", kind="slat", rows_per_shard=16)
    pack_s = time.perf_counter() - t0
    ssm = write_shards(m, shards, "ss", kind="ss_latent", rows_per_shard=16)
    rows = {}
    for name, ds, coll in (("slat_npz_local", SLatDataset(m, normalization="trellis"), collate_sparse),
                           ("slat_packed_shards_mmap", SLatDataset(sm, normalization="trellis"), collate_sparse),
                           ("ss_npz_local", SSLatentDataset(m), collate_dense),
                           ("ss_packed_shards_mmap", SSLatentDataset(ssm), collate_dense)):
        _rate(ds, a.batch, 0.5, coll)  # warm page cache and shard maps
        rows[name] = round(_rate(ds, a.batch, a.seconds, coll), 1)
        print(name, rows[name], "samples/s/core", flush=True)
    vox = np.array(m.loads)
    write_result("training_loader", {
        "threads": 1, "load_average_during_run": __import__("os").getloadavg(),
        "dataset": {"assets": a.assets, "voxels_mean": float(vox.mean()), "voxels_min": int(vox.min()),
                    "voxels_max": int(vox.max()), "note": "synthetic shapes, one core, warm page cache"},
        "batch": a.batch, "samples_per_s_per_core": rows, "goal_slat_samples_per_s_per_core": 2000,
        "manifest_build_s": manifest_s, "pack_s": pack_s,
    })


if __name__ == "__main__":
    main()
