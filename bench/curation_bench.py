"""Curation benchmarks: downloader, safe extraction, ABO tar index, aesthetic scoring throughput.

    python -m bench.curation_bench io            # loopback download, extraction, bomb rejection, tar index
    python -m bench.curation_bench aesthetic     # CLIP ViT-L/14-shaped model (random init) + LAION MLP
    python -m bench.curation_bench all

Results go to bench/results/curation_<part>.json (with the device in words). The aesthetic part uses a
randomly initialised ViT-L/14-shaped CLIP (no hub access on the bench machines): throughput is the
same as with the released weights, scores are meaningless.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _device() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


def _save(part: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"device": _device(), "python": sys.version.split()[0], **data}
    (RESULTS / f"curation_{part}.json").write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def bench_io() -> dict:
    from curation.extract import SafeArchive, safe_extract
    from curation.http import Downloader, RateLimiter, RetryPolicy
    from curation.sources.archives import AboSource

    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        srv_dir = d / "srv"
        srv_dir.mkdir()
        size = 256 << 20
        blob = srv_dir / "blob.bin"
        with open(blob, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        digest = hashlib.sha256(blob.read_bytes()).hexdigest()
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(srv_dir)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/blob.bin"
        dl = Downloader(policy=RetryPolicy(), limiter=RateLimiter())
        t = time.perf_counter()
        dl.fetch(url, d / "got.bin", sha256=digest)
        s = time.perf_counter() - t
        out["download_256MiB_loopback_s"] = round(s, 3)
        out["download_MBps_incl_sha256"] = round(size / s / 1e6, 1)
        t = time.perf_counter()
        dl.fetch(url, d / "got.bin", sha256=digest)
        out["already_verified_refetch_s"] = round(time.perf_counter() - t, 3)
        # rate limit: 20 small requests at 10/s, burst 1
        (srv_dir / "small").write_bytes(b"x")
        lim = Downloader(policy=RetryPolicy(), limiter=RateLimiter(rate=10, burst=1))
        t = time.perf_counter()
        for i in range(20):
            lim.fetch(url.replace("blob.bin", "small"), d / f"s{i}")
        out["rate_limited_20_requests_at_10ps_s"] = round(time.perf_counter() - t, 3)
        httpd.shutdown()

        # extraction: 2000 members x 64 KiB
        zp = d / "repo.zip"
        with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as z:
            for i in range(2000):
                z.writestr(f"repo-abc/dir{i % 37}/f{i}.bin", os.urandom(48 << 10) + bytes(16 << 10))
        t = time.perf_counter()
        files = safe_extract(zp, d / "x")
        s = time.perf_counter() - t
        out["extract_2000_members_s"] = round(s, 3)
        out["extract_MBps"] = round(len(files) * (64 << 10) / s / 1e6, 1)
        t = time.perf_counter()
        with SafeArchive(zp) as a:
            a.extract(d / "one", [f"repo-abc/dir{1000 % 37}/f1000.bin"], strip_prefix="repo-abc")
        out["extract_one_member_of_2000_s"] = round(time.perf_counter() - t, 4)

        # a 1 GiB zip bomb is refused after ~1 MiB of output
        bomb = d / "bomb.zip"
        t = time.perf_counter()
        with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z, z.open("z", "w", force_zip64=True) as f:
            zeros = bytes(1 << 20)
            for _ in range(1024):
                f.write(zeros)
        out["bomb_create_s"] = round(time.perf_counter() - t, 2)
        out["bomb_file_bytes"] = bomb.stat().st_size
        t = time.perf_counter()
        try:
            safe_extract(bomb, d / "b")
        except Exception as exc:  # noqa: BLE001
            out["bomb_refused"] = type(exc).__name__
        out["bomb_refusal_s"] = round(time.perf_counter() - t, 4)

        # ABO: index a 5000-member tar once, then fetch members by seek
        tp = d / "abo-3dmodels.tar"
        with tarfile.open(tp, "w") as tf:
            for i in range(5000):
                data = os.urandom(20 << 10)
                ti = tarfile.TarInfo(f"3dmodels/original/{i % 10}/B{i:06d}.glb")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        src = AboSource(archive=str(tp), cache_dir=str(d / "cache"))
        t = time.perf_counter()
        src._idx = src._index(tp)
        out["abo_index_5000_members_s"] = round(time.perf_counter() - t, 3)
        (d / "f").mkdir()
        t = time.perf_counter()
        for i in range(0, 5000, 50):
            src.fetch_with_info({"file_identifier": f"{i % 10}/B{i:06d}.glb", "sha256": "0" * 64}, d / "f")
        out["abo_fetch_per_member_ms"] = round((time.perf_counter() - t) / 100 * 1000, 3)
    return out


def bench_aesthetic(n_assets: int = 0, batch: int = 64, precision: str = "fp32") -> dict:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import CLIPConfig, CLIPModel

    from catalogs.stage import ArtifactRef, AssetTask, StageContext
    from catalogs.store import Store
    from curation.aesthetic import AestheticStage, build_mlp

    gpu = torch.cuda.is_available()
    n_assets = n_assets or (256 if gpu else 8)
    out: dict = {"clip": "ViT-L/14 shape (24x1024, patch 14, 224 px, proj 768), random init", "precision": precision}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        torch.manual_seed(0)
        vision = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                  "intermediate_size": 4096, "image_size": 224, "patch_size": 14}
        if os.environ.get("CURATION_BENCH_TINY"):  # smoke test of the bench itself on a CPU
            vision.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
            out["clip"] = "TINY smoke-test config"
        cfg = CLIPConfig(vision_config=vision, text_config={"vocab_size": 49408, "num_hidden_layers": 1}, projection_dim=768)
        t = time.perf_counter()
        CLIPModel(cfg).save_pretrained(d / "clip")
        out["build_and_save_s"] = round(time.perf_counter() - t, 1)
        torch.save(build_mlp(768).state_dict(), d / "mlp.pth")
        store = Store(str(d / "store"))
        rng = np.random.default_rng(0)
        # render-like views: a shaded disc on a transparent background, 512 px, PNG (decode cost as real renders)
        yy, xx = np.mgrid[0:512, 0:512] / 511.0
        views = []
        for v in range(8):
            r = np.hypot(xx - 0.5, yy - 0.5)
            arr = np.zeros((512, 512, 4), np.uint8)
            arr[..., 0] = (255 * xx).astype(np.uint8)
            arr[..., 1] = (255 * yy * (v + 1) / 8).astype(np.uint8)
            arr[..., 2] = rng.integers(0, 32, (512, 512), dtype=np.uint8) + 100
            arr[..., 3] = np.where(r < 0.35 + 0.01 * v, 255, 0).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr, "RGBA").save(buf, format="PNG")
            views.append(buf.getvalue())
        out["view_png_bytes"] = int(np.mean([len(b) for b in views]))
        tasks = []
        for a in range(n_assets):
            sha = hashlib.sha256(str(a).encode()).hexdigest()
            for v in range(8):
                store.write_bytes(f"renders/{sha}/{v:03d}.png", views[(a + v) % 8])
            tasks.append(AssetTask(sha256=sha, asset={}, inputs={"render": ArtifactRef(uri=store.uri(f"renders/{sha}"))}))
        stage = AestheticStage({"n_views": 4, "precision": precision, "model": str(d / "clip"), "head": str(d / "mlp.pth")},
                               {"image_batch": batch})
        t = time.perf_counter()
        stage.setup()
        out["setup_s"] = round(time.perf_counter() - t, 2)
        ctx = StageContext(store=store)
        stage.run_batch(tasks[:2], ctx)  # warm-up
        # model only
        x = np.zeros((batch, 3, 224, 224), np.float32)
        sc = stage.model
        for _ in range(2):
            sc.head(sc.embed(x))
        if gpu:
            torch.cuda.synchronize()
        reps = 10 if gpu else 1
        t = time.perf_counter()
        for _ in range(reps):
            sc.head(sc.embed(x))
        if gpu:
            torch.cuda.synchronize()
        out[f"model_views_per_s_batch{batch}"] = round(reps * batch / (time.perf_counter() - t), 1)
        # end to end: PNG read + decode + preprocess + model, 32 assets x 4 views per run_batch
        t = time.perf_counter()
        for i in range(0, n_assets, 32):
            res = stage.run_batch(tasks[i:i + 32], ctx)
            assert not any(isinstance(r, BaseException) for r in res), res
        s = time.perf_counter() - t
        out["stage_assets"] = n_assets
        out["stage_views_per_s"] = round(4 * n_assets / s, 1)
        out["stage_assets_per_s"] = round(n_assets / s, 2)
        out["hours_for_500k_assets_one_worker"] = round(500_777 / (n_assets / s) / 3600, 2)
    return out


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    part = args[0] if args else "all"
    if part in ("io", "all"):
        _save("io", bench_io())
    if part in ("aesthetic", "all"):
        gpu = _device().startswith("NVIDIA")
        res = {p: bench_aesthetic(precision=p) for p in (("fp32", "bf16") if gpu else ("fp32",))}
        _save("aesthetic" + ("_gpu" if gpu else ""), res)


if __name__ == "__main__":
    main()
