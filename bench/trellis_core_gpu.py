"""trellis_core on a GPU: correctness (CPU-path sparse conv vs spconv, the spec vectors on CUDA) and
throughput of the SS / SLat encoders (released configs, random init) in fp16 and bf16 at 5k/15k/30k
voxels, with every attention backend available there side by side.

    python bench/trellis_core_gpu.py --spec ../shared/spec --out bench/results/trellis_core_gpu.json

Each section is guarded: a failure is recorded in the JSON and the script carries on.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import trellis_core  # noqa: E402
from trellis_core import SparseTensor  # noqa: E402
from trellis_core.attention import available_backends  # noqa: E402
from trellis_core.attention import backends as attn_backends  # noqa: E402
from trellis_core.models import SLatEncoder, SparseStructureEncoder, released_config  # noqa: E402
from trellis_core.sparse import conv as sconv  # noqa: E402

VOXELS = (5000, 15000, 30000)
SMALL = False  # --small: tiny configs, for a dry run of the script on CPU


def log(*a):
    print(*a, flush=True)


def surface_voxels(n: int, res: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` voxels of random sphere/ellipsoid shells in a ``res``³ grid (surface-like, clustered)."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3).float()
    occ = torch.zeros(res ** 3, dtype=torch.bool)
    while int(occ.sum()) < n:
        c = torch.rand(3, generator=g) * res * 0.6 + res * 0.2
        r = torch.rand(3, generator=g) * res * 0.3 + 6
        d = (((grid - c) / r) ** 2).sum(-1).sqrt()
        occ |= (d - 1).abs() * r.min() < 0.75
    idx = occ.nonzero(as_tuple=True)[0]
    idx = idx[torch.randperm(idx.shape[0], generator=g)[:n]].sort().values
    xyz = torch.stack([idx // (res * res), (idx // res) % res, idx % res], -1)
    return xyz.int()


def timed(fn, warmup=2, iters=5):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - t0) / iters


def versions():
    v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version()}
    for mod in ("spconv", "cumm", "xformers", "flash_attn"):
        try:
            m = __import__(mod)
            v[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            v[mod] = f"unavailable ({type(e).__name__}: {str(e)[:120]})"
    v["torch_varlen_attn"] = attn_backends.torch_varlen_available()
    return v


# ------------------------------------------------------------------------------------------- checks
def _conv_case(n, cin, cout, k, b, seed):
    coords = torch.cat([torch.cat([torch.full((n // b, 1), i, dtype=torch.int32),
                                   surface_voxels(n // b, 64, seed=seed + i)], 1) for i in range(b)])
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(coords.shape[0], cin, generator=g)
    m = sconv.SparseConv3d(cin, cout, k).eval()
    with torch.no_grad():
        m.conv.weight.normal_(0, 1 / (cin * k ** 3) ** 0.5, generator=g)
        m.conv.bias.normal_(0, 0.1, generator=g)
    return coords, feats, m


def check_sparse_conv(dev):
    """CPU-path (plain torch) submanifold conv vs spconv on the GPU, for spconv's algorithms, fp32/fp16,
    eval/train mode; all against a float64 CPU run of the torch path."""
    out = []
    if not sconv.spconv_available():
        return {"skipped": "spconv not importable"}
    for n, cin, cout, k, b in [(20000, 64, 64, 3, 1), (30000, 128, 256, 3, 2), (8000, 768, 192, 3, 1),
                               (20000, 192, 96, 1, 2)]:
        coords, feats, m = _conv_case(n, cin, cout, k, b, seed=n + cin)
        rec = {"n": int(coords.shape[0]), "batch": b, "cin": cin, "cout": cout, "k": k}
        sd = m.state_dict()
        with torch.no_grad():
            sconv.set_sparse_conv_backend("torch")
            m64 = sconv.SparseConv3d(cin, cout, k).double().eval()
            m64.load_state_dict(sd)
            ref = m64(SparseTensor(feats.double(), coords)).feats
            cpu32 = m(SparseTensor(feats, coords)).feats.double()
            scale = float(ref.abs().max())
            rec["ref_max_abs"] = scale
            rec["cpu_torch_fp32_vs_fp64"] = float((cpu32 - ref).abs().max())
            for dt in (torch.float32, torch.float16):
                mg = sconv.SparseConv3d(cin, cout, k).eval()
                mg.load_state_dict(sd)
                mg = mg.to(dev, dt)
                y = mg(SparseTensor(feats.to(dev, dt), coords.to(dev))).feats.double().cpu()
                rec[f"gpu_torch_{dt}_vs_fp64".replace("torch.", "")] = float((y - ref).abs().max())
            sconv.set_sparse_conv_backend("spconv")
            for algo in ("", "native"):
                os.environ["TRELLIS_SPCONV_ALGO"] = algo
                for dt in (torch.float32, torch.float16):
                    for train in (False, True):
                        label = f"spconv[{algo or 'default'}]_{str(dt).replace('torch.', '')}_{'train' if train else 'eval'}"
                        try:
                            mg = sconv.SparseConv3d(cin, cout, k)
                            mg.load_state_dict(sd)
                            mg = mg.to(dev, dt).train(train)
                            y = mg(SparseTensor(feats.to(dev, dt), coords.to(dev))).feats.double().cpu()
                            rec[label + "_vs_fp64"] = float((y - ref).abs().max())
                            if dt == torch.float32:
                                rec[label + "_vs_cpu_torch_fp32"] = float((y - cpu32).abs().max())
                        except Exception as e:  # noqa: BLE001
                            rec[label + "_error"] = f"{type(e).__name__}: {e}"[:200]
            os.environ.pop("TRELLIS_SPCONV_ALGO", None)
            # speed, fp16 eval
            mh = sconv.SparseConv3d(cin, cout, k).eval()
            mh.load_state_dict(sd)
            mh = mh.to(dev, torch.float16)
            xs = SparseTensor(feats.half().to(dev), coords.to(dev))
            for be in ("spconv", "torch"):
                sconv.set_sparse_conv_backend(be)
                try:
                    rec[f"ms_{be}_fp16"] = 1000 * timed(lambda: mh(xs))
                except Exception as e:  # noqa: BLE001
                    rec[f"ms_{be}_fp16_error"] = f"{type(e).__name__}: {e}"[:200]
            sconv.set_sparse_conv_backend(None)
        f32 = rec.get("spconv[default]_float32_eval_vs_cpu_torch_fp32")
        rec["ok_fp32_eval"] = f32 is not None and f32 <= 1e-4 * max(1.0, scale)
        log("conv", rec)
        out.append(rec)
    return out


def bench_slat_flow(dev):
    """Released slat_flow_img_dit_L (random init, fp16 torso), one asset per forward: spconv vs torch convs."""
    from trellis_core.models import SLatFlowModel
    cfg = released_config("slat_flow_img_dit_L_64l8p2_fp16")
    if SMALL:
        cfg["args"].update(model_channels=64, num_blocks=1, num_heads=4, cond_channels=32, io_block_channels=[16])
    model = SLatFlowModel(**cfg["args"]).to(dev).eval()
    out = []
    for n in VOXELS:
        coords = torch.cat([torch.zeros(n, 1, dtype=torch.int32), surface_voxels(n, seed=3)], 1).to(dev)
        x = SparseTensor(torch.randn(n, 8, device=dev), coords)
        t = torch.full((1,), 500.0, device=dev)
        cond = torch.randn(1, 1374, cfg["args"]["cond_channels"], device=dev)
        for be in ("spconv", "torch"):
            rec = {"model": "slat_flow_img_dit_L_64l8p2_fp16", "dtype": "float16", "voxels": n, "batch": 1,
                   "sparse_conv": be, "attention": "sdpa[auto]"}
            try:
                sconv.set_sparse_conv_backend(be)
                with torch.no_grad():
                    s = timed(lambda: model(SparseTensor(x.feats, coords), t, cond))
                rec.update({"ms_per_forward": 1000 * s})
            except Exception as e:  # noqa: BLE001
                rec["error"] = f"{type(e).__name__}: {e}"[:300]
            finally:
                sconv.set_sparse_conv_backend(None)
            log("bench", rec)
            out.append(rec)
    return out


def check_vectors_conv(spec, dev):
    """Vectors on CUDA with the sparse conv forced to each backend (attention: sdpa auto)."""
    from trellis_core.spec_vectors import list_vectors, run_vector
    torch.backends.cudnn.allow_tf32 = False
    res = {}
    for be in ("spconv", "torch"):
        sconv.set_sparse_conv_backend(be)
        for name in list_vectors(spec):
            try:
                rep = run_vector(spec, name, device=dev)
                res.setdefault(be, {})[name] = {"ok": all(r["ok"] for r in rep.values()),
                                                "worst_ratio": max(r.get("worst_ratio", 0.0) for r in rep.values())}
            except Exception as e:  # noqa: BLE001
                res.setdefault(be, {})[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
        log("vectors conv", be, res[be])
    sconv.set_sparse_conv_backend(None)
    torch.backends.cudnn.allow_tf32 = True
    return res


def check_vectors(spec, dev):
    from trellis_core.spec_vectors import list_vectors, run_vector
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    res = {}
    for be in available_backends(dev):
        if be == "naive":
            continue
        modes = ["varlen", "bucket", "nested", "pad"] if be == "sdpa" else [None]
        for mode in modes:
            label = be if mode is None else f"sdpa[{mode}]"
            if mode:
                os.environ["TRELLIS_SDPA_VARLEN"] = mode
            with trellis_core.attention_backend(be):
                for name in list_vectors(spec):
                    try:
                        rep = run_vector(spec, name, device=dev)
                        res.setdefault(label, {})[name] = {
                            "ok": all(r["ok"] for r in rep.values()),
                            "worst_ratio": max(r.get("worst_ratio", 0.0) for r in rep.values()),
                            "max_abs_err": max(r.get("max_abs_err", 0.0) for r in rep.values()),
                            "failed": [k for k, r in rep.items() if not r["ok"]]}
                    except Exception as e:  # noqa: BLE001
                        res.setdefault(label, {})[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:300]}
            log("vectors", label, {k: v.get("ok") for k, v in res[label].items()})
    os.environ.pop("TRELLIS_SDPA_VARLEN", None)
    torch.backends.cudnn.allow_tf32 = True
    return res


# ------------------------------------------------------------------------------------------- benches
def bench_ss_encoder(dev, batch=8):
    cfg = released_config("ss_enc_conv3d_16l8_fp16")
    if SMALL:
        cfg["args"].update(channels=[8, 8, 8])
    model = SparseStructureEncoder(**cfg["args"]).to(dev).eval()
    out = []
    for dt in (torch.float16, torch.bfloat16):
        model.convert_torso(dt)
        for n in VOXELS:
            occ = torch.zeros(batch, 1, 64, 64, 64)
            for b in range(batch):
                xyz = surface_voxels(n, seed=b).long()
                occ[b, 0, xyz[:, 0], xyz[:, 1], xyz[:, 2]] = 1
            occ = occ.to(dev)
            with torch.no_grad():
                s = timed(lambda: model(occ))
            rec = {"model": "ss_enc_conv3d_16l8_fp16", "dtype": str(dt).replace("torch.", ""), "voxels": n,
                   "batch": batch, "ms_per_batch": 1000 * s, "assets_per_s": batch / s}
            log("bench", rec)
            out.append(rec)
    return out


def bench_slat_encoder(dev, batch=4):
    cfg = released_config("slat_enc_swin8_B_64l8_fp16")
    if SMALL:
        cfg["args"].update(model_channels=64, num_blocks=2, num_heads=4)
    model = SLatEncoder(**cfg["args"]).to(dev).eval()
    out = []
    combos = []
    for be in available_backends(dev):
        if be == "naive":
            continue
        if be == "sdpa":
            for mode in ("varlen", "bucket", "nested", "pad"):
                combos.append((be, mode))
        else:
            combos.append((be, None))
    for dt in (torch.float16, torch.bfloat16):
        model.convert_torso(dt)
        for n in VOXELS:
            coords = torch.cat([torch.cat([torch.full((n, 1), b, dtype=torch.int32), surface_voxels(n, seed=b)], 1)
                                for b in range(batch)]).to(dev)
            feats = torch.randn(coords.shape[0], 1024, device=dev)
            for be, mode in combos:
                label = be if mode is None else f"sdpa[{mode}]"
                rec = {"model": "slat_enc_swin8_B_64l8_fp16", "dtype": str(dt).replace("torch.", ""), "voxels": n,
                       "batch": batch, "attention": label}
                try:
                    if mode:
                        os.environ["TRELLIS_SDPA_VARLEN"] = mode

                    def run():
                        # fresh tensor each call: window partitions are rebuilt, as for a new batch
                        return model(SparseTensor(feats, coords), sample_posterior=False)

                    with trellis_core.attention_backend(be), torch.no_grad():
                        s = timed(run)
                    rec.update({"ms_per_batch": 1000 * s, "assets_per_s": batch / s})
                except Exception as e:  # noqa: BLE001
                    rec["error"] = f"{type(e).__name__}: {e}"[:300]
                finally:
                    os.environ.pop("TRELLIS_SDPA_VARLEN", None)
                log("bench", rec)
                out.append(rec)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default=None)
    ap.add_argument("--out", default="bench/results/trellis_core_gpu.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--voxels", default="5000,15000,30000")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: conv,vectors,vconv,ss,slat,flow")
    a = ap.parse_args()
    dev = torch.device(a.device)
    global VOXELS, SMALL
    SMALL = a.small
    VOXELS = tuple(int(v) for v in a.voxels.split(","))
    skip = set(filter(None, a.skip.split(",")))
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else "none",
                    "gpu_count": torch.cuda.device_count(),
                    "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
        "attention_backends": available_backends(dev),
        "notes": [
            "SS encoder is a dense 64^3 conv net: its cost does not depend on the voxel count "
            "(rows kept per count for the table); it has no attention, so no backend column.",
            "SLat encoder: released config (768 ch, 12 swin-8 blocks, in 1024), random init, batch of 4 assets "
            "per forward, surface-like random voxel sets; assets/s = batch / time per forward.",
            "sdpa[mode] = PyTorch SDPA with the variable-length strategy of TRELLIS_SDPA_VARLEN.",
        ],
    }
    sections = [("sparse_conv_check", "conv", lambda: check_sparse_conv(dev)),
                ("vectors_on_gpu", "vectors", lambda: check_vectors(Path(a.spec), dev) if a.spec else {"skipped": "no --spec"}),
                ("vectors_on_gpu_by_conv_backend", "vconv",
                 lambda: check_vectors_conv(Path(a.spec), dev) if a.spec else {"skipped": "no --spec"}),
                ("bench_ss_encoder", "ss", lambda: bench_ss_encoder(dev)),
                ("bench_slat_encoder", "slat", lambda: bench_slat_encoder(dev)),
                ("bench_slat_flow", "flow", lambda: bench_slat_flow(dev))]
    for key, short, fn in sections:
        if short in skip:
            continue
        t0 = time.time()
        try:
            result[key] = fn()
        except Exception as e:  # noqa: BLE001
            result[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
            log(key, "FAILED", e)
        result.setdefault("section_seconds", {})[key] = round(time.time() - t0, 1)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
    log("wrote", a.out)


if __name__ == "__main__":
    main()
