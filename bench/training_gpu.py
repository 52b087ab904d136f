"""GPU training step of the full-size SLat flow (random init, slat_flow_img_dit_L_64l8p2 args, fp32
master weights + bf16/fp16 autocast) at realistic token counts, and the loader feeding it.

    python -m bench.training_gpu --out bench/results/training_gpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch


def _shells(rng, nvox, res=64):
    """Union of random sphere shells (1 voxel thick) until ``nvox`` voxels: a realistic sparse structure."""
    import numpy as np
    g = np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    p = (g + 0.5) / res - 0.5
    occ = np.zeros(len(g), bool)
    while occ.sum() < nvox:
        c, r = rng.uniform(-0.15, 0.15, 3), rng.uniform(0.1, 0.35)
        occ |= np.abs(np.linalg.norm(p - c, axis=1) - r) <= 0.75 / res
    return g[occ]


def _loader_rate(batch, seconds=3.0):
    """SLatDataset + collate from npz files on local disk, 1 core (same work without the catalog when
    duckdb/pyarrow are missing on this machine)."""
    import io
    import numpy as np
    d = tempfile.mkdtemp()
    rng = np.random.default_rng(1)
    paths = []
    for i in range(32):
        c = _shells(rng, int(rng.uniform(8000, 24000))).astype(np.uint8)
        f = rng.normal(size=(len(c), 8)).astype(np.float32)
        paths.append(os.path.join(d, f"{i}.npz"))
        np.savez(paths[-1], coords=c, feats=f)
    from trellis_core.sparse import SparseTensor
    mean, std = np.zeros(8, np.float32), np.ones(8, np.float32)
    torch.set_num_threads(1)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        items = []
        for i in range(batch):
            with np.load(paths[(n + i) % len(paths)]) as z:
                items.append((torch.from_numpy(z["coords"].astype(np.int32)), torch.from_numpy((z["feats"] - mean) / std)))
        SparseTensor.from_batch([f for _, f in items], [c for c, _ in items])
        n += batch
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/training_gpu.json")
    ap.add_argument("--voxels", default="8000,16000,24000")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--checkpointing", action="store_true")
    a = ap.parse_args()
    from bench.common import metadata
    from trellis_core.models import SLatFlowModel, released_config
    from trellis_core.sparse import SparseTensor
    from trellis_core.train import flow_pair, initialize_weights
    dev = torch.device("cuda")
    args = released_config("slat_flow_img_dit_L_64l8p2_fp16")["args"]
    args["use_fp16"] = False
    args["use_checkpoint"] = a.checkpointing
    torch.manual_seed(0)
    model = initialize_weights(SLatFlowModel(**args)).to(dev).train()
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    results = []
    import numpy as np
    rng = np.random.default_rng(0)
    for nvox in [int(v) for v in a.voxels.split(",")]:
        for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            # realistic sparse structure: shell voxels of shapes, trimmed/padded to ~nvox per sample
            feats, coords = [], []
            for b in range(a.batch):
                c = _shells(rng, nvox)
                c = c[rng.permutation(len(c))[:nvox]]
                coords.append(torch.from_numpy(c.astype(np.int32)))
                feats.append(torch.randn(len(c), 8))
            x0 = SparseTensor.from_batch(feats, coords).to(dev)
            cond = torch.randn(a.batch, 1374, 1024, device=dev)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            times, mem = [], 0
            try:
                torch.cuda.reset_peak_memory_stats()
                for s in range(a.steps):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    t = torch.rand(a.batch, device=dev)
                    eps = torch.randn_like(x0.feats)
                    xt, target = flow_pair(x0.feats, eps, t[x0.batch_index], 1e-5)
                    with torch.autocast("cuda", dtype=dtype):
                        pred = model(x0.replace(xt), t * 1000, cond)
                        loss = ((pred.feats.float() - target) ** 2).mean()
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    scaler.step(opt)
                    scaler.update()
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t0)
                mem = torch.cuda.max_memory_allocated() / 2 ** 30
                st = sorted(times[2:]) if len(times) > 3 else times
                row = {"voxels_per_sample": nvox, "batch": a.batch, "tokens_total": int(x0.feats.shape[0]),
                       "precision": dtype_name, "step_s_median": st[len(st) // 2], "step_s_all": times,
                       "samples_per_s": a.batch / st[len(st) // 2], "peak_mem_gib": round(mem, 2),
                       "loss": float(loss)}
            except torch.cuda.OutOfMemoryError as e:
                row = {"voxels_per_sample": nvox, "batch": a.batch, "precision": dtype_name, "error": "OOM"}
                torch.cuda.empty_cache()
            print(json.dumps(row), flush=True)
            results.append(row)
    loader_sps = _loader_rate(a.batch)
    ok = [r for r in results if "samples_per_s" in r]
    need = max(r["samples_per_s"] for r in ok) if ok else None
    out = {"benchmark": "training_gpu", "meta": metadata(), "gpu": torch.cuda.get_device_name(0),
           "model": "slat_flow_img_dit_L_64l8p2 args, random init, fp32 master weights + autocast",
           "params": nparams, "gradient_checkpointing": a.checkpointing, "steps": results,
           "loader": {"samples_per_s_one_core": loader_sps, "voxels_per_sample": "uniform 8k-24k",
                      "max_training_samples_per_s": need,
                      "loader_cores_needed": (need / loader_sps) if need else None}}
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out["loader"]))


if __name__ == "__main__":
    main()
