"""GPU benchmark of the encode stages (issue 6).

Feature stage with the full ViT-L/14-reg architecture (random init), bf16: seconds per 150-view
asset for the whole stage (PNG decode + resize in the loader pool, model, projection, npz writes)
next to the model-only forward over the same 150 images, in one run. SS and SLat encoders with the
released configs (random init): assets per second.

    python -m bench.encode_gpu --assets 16 --out bench/results/encode_gpu.json
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_result  # noqa: E402
from catalogs import layout  # noqa: E402
from catalogs.stage import ArtifactRef, AssetTask, StageContext  # noqa: E402
from catalogs.store import Store  # noqa: E402
from encode.models import VITL14_REG, _make_trellis, make_tiny_dinov2  # noqa: E402
from encode.plyio import points_ply_bytes  # noqa: E402


def sha(i: int) -> str:
    import hashlib

    return hashlib.sha256(f"bench-{i}".encode()).hexdigest()


def look_at(pos: np.ndarray) -> np.ndarray:
    z = pos / np.linalg.norm(pos)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, pos
    return m


def transforms(n: int) -> dict:
    """Feature-render cameras: radius 2, FOV 40 deg, Hammersley-like spread (exact sequence not needed)."""
    fov = np.deg2rad(40.0)
    frames = []
    for i in range(n):
        yaw = 2 * np.pi * ((i * 0.618034) % 1.0)
        pitch = np.arcsin(np.clip(2 * (i + 0.5) / n - 1, -0.999, 0.999)) * 0.95
        pos = 2.0 * np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
        frames.append({"file_path": f"{i:03d}.png", "camera_angle_x": float(fov),
                       "transform_matrix": look_at(pos).tolist()})
    return {"aabb": [[-0.5] * 3, [0.5] * 3], "scale": 1.0, "offset": [0.0] * 3, "frames": frames}


def render_like_png(i: int, size: int = 512) -> bytes:
    """An object-like RGBA image: transparent background, shaded blob with texture."""
    from PIL import Image

    rng = np.random.default_rng(i)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    r = np.sqrt((xx / (0.3 + 0.1 * rng.random())) ** 2 + (yy / (0.3 + 0.1 * rng.random())) ** 2)
    inside = r < 1.0
    shade = np.clip(1.0 - r, 0, 1)
    tex = (np.sin(xx * 60 + i) * np.cos(yy * 45) * 0.5 + 0.5)
    rgb = np.stack([shade * 200 + tex * 55, shade * 120 + 60, tex * 180 + 40], -1)
    rgb += rng.normal(0, 4, rgb.shape)
    a = np.where(inside, 255, 0)
    img = np.concatenate([np.clip(rgb, 0, 255), a[..., None]], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def shell(radius: float = 0.42, res: int = 64) -> np.ndarray:
    g = np.indices((res, res, res)).reshape(3, -1).T
    r = np.linalg.norm((g + 0.5) / res - 0.5, axis=1)
    idx = g[np.abs(r - radius) < 1.0 / res]
    return idx[np.random.default_rng(0).permutation(len(idx))]


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=16)
    ap.add_argument("--views", type=int, default=150)
    ap.add_argument("--batch-views", type=int, default=64)
    ap.add_argument("--loader-threads", type=int, default=12)
    ap.add_argument("--latent-assets", type=int, default=64)
    ap.add_argument("--out", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny models, few views: checks the script only")
    args = ap.parse_args()

    from encode.features import FeatureStage, load_view, preprocess
    from encode.latents import SLatStage, SSLatentStage
    from trellis_core import released_config

    dev = torch.device("cpu" if args.smoke else "cuda")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    work = Path(args.work or tempfile.mkdtemp(prefix="encode-bench-"))
    figures: dict = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (smoke)",
                     "torch": torch.__version__}
    arch = {} if args.smoke else VITL14_REG
    width = 64 if args.smoke else 1024
    t0 = time.perf_counter()
    dino = make_tiny_dinov2(work / "models" / "dinov2_vitl14_reg", seed=0, name="dinov2_vitl14_reg", **arch)
    ss_cfg, slat_cfg = released_config("ss_enc_conv3d_16l8_fp16"), released_config("slat_enc_swin8_B_64l8_fp16")
    if args.smoke:
        from encode.models import TINY_SLAT_ENC, TINY_SS_ENC

        ss_cfg, slat_cfg = TINY_SS_ENC, TINY_SLAT_ENC
    ss_stem = _make_trellis(work / "models" / "ss_enc_conv3d_16l8_fp16", ss_cfg, 0, "ss_enc_conv3d_16l8_fp16", "ss_enc")
    slat_stem = _make_trellis(work / "models" / "slat_enc_swin8_B_64l8_fp16", slat_cfg, 0, "slat_enc_swin8_B_64l8_fp16",
                              "slat_enc")
    figures["model_build_s"] = round(time.perf_counter() - t0, 2)

    # synthetic upstream: the same 150 PNGs under every asset (decoded separately each time)
    store = Store(str(work / "store"))
    ctx = StageContext(store, "bench")
    pngs = [render_like_png(i) for i in range(args.views)]
    tj = json.dumps(transforms(args.views)).encode()
    idx = shell()
    vox = points_ply_bytes(((idx + 0.5) / 64 - 0.5).astype(np.float32))
    tasks = []
    for a in range(args.assets + 1):
        s = sha(a)
        for i, b in enumerate(pngs):
            store.write_bytes(f"{layout.renders(s)}/{i:03d}.png", b)
        store.write_bytes(f"{layout.renders(s)}/transforms.json", tj)
        store.write_bytes(layout.voxels(s), vox)
        tasks.append(AssetTask(s, {}, {"render": ArtifactRef(store.uri(layout.renders(s))),
                                        "voxelize": ArtifactRef(store.uri(layout.voxels(s)))}))
    figures.update(num_voxels=int(len(idx)), views_per_asset=args.views, png_kib=round(np.mean([len(b) for b in pngs]) / 1024, 1))

    # loader alone: decode + resize of 150 views on the pool
    import concurrent.futures as cf

    from encode.features import decode_view

    with cf.ThreadPoolExecutor(args.loader_threads) as pool:
        t = time.perf_counter()
        arrays = list(pool.map(lambda b: load_view(b, 518), pngs))
        figures["loader_decode_resize_s_per_asset"] = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        list(pool.map(decode_view, pngs))
        figures["loader_decode_only_s_per_asset"] = round(time.perf_counter() - t, 4)

    stage = FeatureStage({"model": str(dino), "precision": "bf16"},
                         {"batch_views": args.batch_views, "loader_threads": args.loader_threads, "writer_threads": 4})
    t = time.perf_counter()
    stage.setup()
    figures["feature_setup_s"] = round(time.perf_counter() - t, 2)
    model = stage.model

    pix = torch.from_numpy(np.stack(arrays)).to(dev)
    x_all = preprocess(pix)

    def model_only() -> float:
        sync()
        t = time.perf_counter()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            for i in range(0, len(x_all), args.batch_views):
                model(pixel_values=x_all[i:i + args.batch_views])
        sync()
        return time.perf_counter() - t

    def stage_run(batch: list[AssetTask]) -> float:
        sync()
        t = time.perf_counter()
        for i in range(0, len(batch), stage.batch_size):
            res = stage.run_batch(batch[i:i + stage.batch_size], ctx)
            bad = [r for r in res if isinstance(r, BaseException)]
            if bad:
                raise bad[0]
        sync()
        return (time.perf_counter() - t) / len(batch)

    model_only()  # warm-up
    stage_run(tasks[:1])
    mo, st = [], []
    for _ in range(3):
        mo.append(model_only())
        st.append(stage_run(tasks[1:]))
    stage.config["resize_on_device"] = False
    cpu_resize = stage_run(tasks[1:])
    stage.config["resize_on_device"] = True
    figures["feature"] = {
        "stage_with_pil_resize_on_cpu_s_per_asset": round(cpu_resize, 4),
        "model_only_s_per_asset": [round(v, 4) for v in mo], "stage_s_per_asset": [round(v, 4) for v in st],
        "model_only_median": round(statistics.median(mo), 4), "stage_median": round(statistics.median(st), 4),
        "stage_over_model": round(statistics.median(st) / statistics.median(mo), 3),
        "assets_per_run": args.assets, "batch_views": args.batch_views, "loader_threads": args.loader_threads,
        "goal_stage_s_per_asset": 0.45,
    }
    print(json.dumps(figures["feature"]), flush=True)

    # parity: bf16 vs fp32 stage output, and fp32 stage vs a plain per-view reference (first 16 views)
    import torch.nn.functional as F
    from transformers import Dinov2WithRegistersModel

    from encode.projection import cameras_from_transforms, project_uv

    small = AssetTask(sha(10_000), {}, {})
    s = small.sha256
    nv = min(16, args.views)
    for i in range(nv):
        store.write_bytes(f"{layout.renders(s)}/{i:03d}.png", pngs[i])
    t16 = transforms(args.views)
    t16["frames"] = t16["frames"][:nv]
    store.write_bytes(f"{layout.renders(s)}/transforms.json", json.dumps(t16).encode())
    store.write_bytes(layout.voxels(s), vox)
    small = AssetTask(s, {}, {"render": ArtifactRef(store.uri(layout.renders(s))),
                              "voxelize": ArtifactRef(store.uri(layout.voxels(s)))})
    out_bf16 = np.load(store.path(store.rel(stage.run_batch([small], ctx)[0].uri)))["patchtokens"].astype(np.float32)
    fp32 = FeatureStage({"model": str(dino), "precision": "fp32"}, {"batch_views": 16})
    fp32.model = model
    out_fp32 = np.load(store.path(store.rel(fp32.run_batch([small], ctx)[0].uri)))["patchtokens"].astype(np.float32)
    ref_model = Dinov2WithRegistersModel.from_pretrained(str(dino)).to(dev).eval()
    _, w2c, K = cameras_from_transforms(t16)
    pts = torch.from_numpy(((idx + 0.5) / 64 - 0.5).astype(np.float32)).to(dev)
    uv = project_uv(pts, torch.from_numpy(w2c), torch.from_numpy(K))
    acc = torch.zeros(len(idx), width, device=dev)
    with torch.no_grad():
        for v in range(nv):
            h = ref_model(pixel_values=x_all[v:v + 1], output_hidden_states=True).hidden_states[-1]
            tok = h[:, 5:].transpose(1, 2).reshape(1, width, 37, 37)
            acc += F.grid_sample(tok, (uv[v:v + 1] * 2 - 1)[:, None], mode="bilinear", padding_mode="zeros",
                                 align_corners=False)[0, :, 0].T
    ref = (acc / nv).half().float().cpu().numpy()
    scale = float(np.abs(ref).mean())
    figures["parity_16_views"] = {
        "fp32_stage_vs_reference_max_abs": float(np.abs(out_fp32 - ref).max()),
        "bf16_vs_fp32_mean_abs": float(np.abs(out_bf16 - out_fp32).mean()),
        "bf16_vs_fp32_max_abs": float(np.abs(out_bf16 - out_fp32).max()),
        "feature_mean_abs": scale,
    }
    print(json.dumps(figures["parity_16_views"]), flush=True)
    del ref_model
    stage.close()

    # SS and SLat: released configs, random init, assets/s
    feat_uri = store.uri(layout.features("dinov2_vitl14_reg", tasks[1].sha256))
    lat_tasks = []
    for a in range(args.latent_assets):
        s = sha(20_000 + a)
        store.write_bytes(layout.voxels(s), vox)
        frel = layout.features("dinov2_vitl14_reg", s)
        store.write_bytes(frel, store.read_bytes(store.rel(feat_uri)))
        lat_tasks.append(AssetTask(s, {}, {"voxelize": ArtifactRef(store.uri(layout.voxels(s))),
                                           "features": ArtifactRef(store.uri(frel))}))
    for label, st_obj in (("ss_latent", SSLatentStage({"model": str(ss_stem)})),
                          ("slat", SLatStage({"model": str(slat_stem), "feature_model": "dinov2_vitl14_reg"}))):
        st_obj.setup()
        res = st_obj.run_batch(lat_tasks[:2], ctx)  # warm-up
        bad = [r for r in res if isinstance(r, BaseException)]
        if bad:
            raise bad[0]
        times = []
        for _ in range(2):
            sync()
            t = time.perf_counter()
            for i in range(0, len(lat_tasks), st_obj.batch_size):
                st_obj.run_batch(lat_tasks[i:i + st_obj.batch_size], ctx)
            sync()
            times.append(time.perf_counter() - t)
        best = min(times)
        figures[label] = {"assets": len(lat_tasks), "assets_per_s": round(len(lat_tasks) / best, 2),
                          "s_per_asset": round(best / len(lat_tasks), 5), "batch_size": st_obj.batch_size,
                          "torso_dtype": str(st_obj.model.dtype)}
        print(label, json.dumps(figures[label]), flush=True)
        if label == "slat" and dev.type == "cuda":  # where the SLat time goes (trellis_core's model)
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                st_obj.run_batch(lat_tasks[:8], ctx)
                sync()
            table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=18, max_name_column_width=60)
            print(table, flush=True)
            figures["slat_profile_top_cpu"] = table.splitlines()[:24]
    lat = figures["ss_latent"]["s_per_asset"] + figures["slat"]["s_per_asset"]
    figures["latents_over_feature_stage"] = round(lat / figures["feature"]["stage_median"], 4)
    figures["goal_latents_over_feature"] = 0.10
    out = write_result("encode_gpu", figures, args.out)
    print(out.read_text())
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
