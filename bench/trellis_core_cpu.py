"""Small CPU figures for trellis_core (the project's CPU machine): spec vectors, the torch sparse-conv path
and the SLat encoder (released width, fewer voxels) with the CPU attention strategies.

    python bench/trellis_core_cpu.py --out bench/results/trellis_core_cpu.json
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from trellis_core import SLatEncoder, SparseTensor  # noqa: E402
from trellis_core.models import released_config  # noqa: E402
from trellis_core.sparse import SparseConv3d  # noqa: E402
from trellis_core.spec_vectors import find_spec_dir, list_vectors, run_vector  # noqa: E402


def timed(fn, warmup=1, iters=3):
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def shell_voxels(n, res=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3).float()
    d = (grid - res / 2).norm(dim=1)
    idx = (d - res * 0.4).abs().argsort()[: n]
    idx = idx[torch.randperm(n, generator=g)].sort().values
    return grid[idx].int()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/trellis_core_cpu.json")
    a = ap.parse_args()
    res = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "torch_threads": torch.get_num_threads(),
                       "loadavg_at_start": os.getloadavg()},
           "versions": {"python": platform.python_version(), "torch": torch.__version__},
           "notes": ["fp32, torch sparse-conv path, SDPA; the machine was shared with other jobs "
                     "(see loadavg), so treat figures as rough"]}
    spec = find_spec_dir()
    if spec:
        res["vectors_s"] = {n: round(timed(lambda n=n: run_vector(spec, n), 0, 1), 3) for n in list_vectors(spec)}
    conv = []
    with torch.no_grad():
        for n, c in ((20000, 64), (20000, 128)):
            coords = torch.cat([torch.zeros(n, 1, dtype=torch.int32), shell_voxels(n)], 1)
            m = SparseConv3d(c, c, 3).eval()
            f = torch.randn(n, c)
            conv.append({"voxels": n, "channels": c,
                         "ms_first_call_incl_neighbour_map": 1000 * timed(lambda: m(SparseTensor(f, coords)), 0, 1),
                         "ms_cached_map": 1000 * timed(lambda x=SparseTensor(f, coords): m(x))})
    res["subm_conv3d_torch"] = conv
    cfg = released_config("slat_enc_swin8_B_64l8_fp16")["args"]
    cfg["use_fp16"] = False
    enc = SLatEncoder(**cfg).eval()
    rows = []
    for n in (2000, 5000):
        coords = torch.cat([torch.zeros(n, 1, dtype=torch.int32), shell_voxels(n)], 1)
        feats = torch.randn(n, 1024)
        for mode in ("bucket", "pad"):
            os.environ["TRELLIS_SDPA_VARLEN"] = mode
            with torch.no_grad():
                s = timed(lambda: enc(SparseTensor(feats, coords), sample_posterior=False), 1, 2)
            rows.append({"model": "slat_enc_swin8_B_64l8 (fp32)", "voxels": n, "sdpa_varlen": mode,
                         "s_per_asset": s})
            print(rows[-1], flush=True)
    os.environ.pop("TRELLIS_SDPA_VARLEN", None)
    res["slat_encoder"] = rows
    res["machine"]["loadavg_at_end"] = os.getloadavg()
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
