"""GPU benchmark of the encode stages (issue 17 parts 1 and 3), every figure next to the model-only
figure of the same run.

Feature stage with the full ViT-L/14-reg architecture (random init), bf16, reading 150 PNG views
per asset from the store: seconds per asset for the whole stage (read, decode, upload, resize,
model, projection, npz writes) against the model alone over the same 150 images already on the
device, both with the stage's attention kernel and compile setting. Also measured side by side:
the SDPA kernels (flash, memory-efficient, cuDNN, math) and, with --compile, torch.compile; the
PNG decoders; the fp32 / bf16 parity against a plain per-view reference. SS and SLat encoders with
the released configs (random init): seconds per asset, as a fraction of the feature stage, and a
torch.profiler table of the SLat stage.

    python3 -m bench.encode_gpu                 # writes bench/results/encode_gpu.json (H200: ~100 s)
    python3 -m bench.encode_gpu --smoke         # CPU, tiny models, few views: checks the script only
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
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
from encode.plyio import points_ply_bytes  # noqa: E402
from trellis_core.models.tiny import save_tiny  # noqa: E402

VITL14_REG = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, mlp_ratio=4,
                  patch_size=14, image_size=518, num_register_tokens=4, layerscale_value=1.0)
"""The architecture of dinov2_vitl14_reg (the weights themselves come from the Hub; random init here)."""


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
    """Feature-render cameras: radius 2, FOV 40 deg, spread over the sphere (exact sequence not needed)."""
    fov = np.deg2rad(40.0)
    frames = []
    for i in range(n):
        yaw = 2 * np.pi * ((i * 0.618034) % 1.0)
        pitch = np.arcsin(np.clip(2 * (i + 0.5) / n - 1, -0.999, 0.999)) * 0.95
        pos = 2.0 * np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
        frames.append({"file_path": f"{i:03d}.png", "camera_angle_x": float(fov), "transform_matrix": look_at(pos).tolist()})
    return {"aabb": [[-0.5] * 3, [0.5] * 3], "scale": 1.0, "offset": [0.0] * 3, "frames": frames}


def render_like_png(i: int, size: int = 512) -> bytes:
    """An object-like RGBA image: transparent background, shaded blob with texture."""
    from PIL import Image

    rng = np.random.default_rng(i)
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size - 0.5
    r = np.sqrt((xx / (0.3 + 0.1 * rng.random())) ** 2 + (yy / (0.3 + 0.1 * rng.random())) ** 2)
    shade = np.clip(1.0 - r, 0, 1)
    tex = (np.sin(xx * 60 + i) * np.cos(yy * 45) * 0.5 + 0.5)
    rgb = np.stack([shade * 200 + tex * 55, shade * 120 + 60, tex * 180 + 40], -1) + rng.normal(0, 4, (size, size, 3))
    img = np.concatenate([np.clip(rgb, 0, 255), np.where(r < 1.0, 255, 0)[..., None]], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def shell(radius: float = 0.42, res: int = 64) -> np.ndarray:
    g = np.indices((res, res, res)).reshape(3, -1).T
    r = np.linalg.norm((g + 0.5) / res - 0.5, axis=1)
    idx = g[np.abs(r - radius) < 1.0 / res]
    return idx[np.random.default_rng(0).permutation(len(idx))]


class Timer:
    def __init__(self, dev) -> None:
        self.dev = dev

    def sync(self) -> None:
        if self.dev.type == "cuda":
            import torch

            torch.cuda.synchronize()

    def __call__(self, fn) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=16)
    ap.add_argument("--views", type=int, default=150)
    ap.add_argument("--latent-assets", type=int, default=64)
    ap.add_argument("--attention", default="auto", help="the stage's SDPA kernel (auto|flash|efficient|cudnn|math)")
    ap.add_argument("--compile", default="", help="also measure torch.compile in this mode and run the stage with it")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny models, few views: checks the script only")
    args = ap.parse_args()
    if args.smoke:
        args.assets, args.views, args.latent_assets, args.reps = 2, 6, 4, 1

    from encode import pngdecode
    from encode.features import FeatureStage, load_view, preprocess
    from encode.latents import SLatStage, SSLatentStage
    from trellis_core import released_config

    dev = torch.device("cpu" if args.smoke else "cuda")
    timed = Timer(dev)
    work = Path(tempfile.mkdtemp(prefix="encode-bench-"))
    fig: dict = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (smoke)", "torch": torch.__version__}
    t0 = time.perf_counter()
    arch = {} if args.smoke else VITL14_REG
    dino = save_tiny("dinov2", work / "models" / "dinov2_vitl14_reg", name="dinov2_vitl14_reg", **arch)
    encoders = {}
    for kind, released in (("ss_enc", "ss_enc_conv3d_16l8_fp16"), ("slat_enc", "slat_enc_swin8_B_64l8_fp16")):
        over = {} if args.smoke else released_config(released)["args"]
        encoders[kind] = save_tiny(kind, work / "models" / released, name=released, **over)
    fig["model_build_s"] = round(time.perf_counter() - t0, 1)

    # synthetic upstream: the same 150 PNGs under every asset (read and decoded separately each time)
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
    fig.update(num_voxels=int(len(idx)), views_per_asset=args.views, png_kib=round(np.mean([len(b) for b in pngs]) / 1024, 1))

    # PNG decoders, 150 views on a 12-thread pool (what the loader does), and whether they agree with Pillow
    decoders = {}
    with cf.ThreadPoolExecutor(12) as pool:
        ref = list(pool.map(pngdecode.decode_pil, pngs))
        for name in pngdecode.available():
            out = list(pool.map(lambda b, n=name: pngdecode.decode_rgba(b, n), pngs))  # warm-up + equality
            decoders[name] = {"s_per_asset": round(min(timed(lambda n=name: list(pool.map(
                lambda b: pngdecode.decode_rgba(b, n), pngs))) for _ in range(2)), 4),
                "equal_to_pil": all(np.array_equal(x, y) for x, y in zip(out, ref))}
        decoders["pil_decode_and_lanczos_resize"] = {"s_per_asset": round(timed(lambda: list(pool.map(
            lambda b: load_view(b, 518), pngs))), 4)}
    fig["png_decode_150_views_12_threads"] = decoders
    print("decoders", json.dumps(decoders), flush=True)

    config = {"attention": args.attention, "writer_threads": 4}
    if args.compile:
        config["compile"] = args.compile
    stage = FeatureStage({"model": str(dino), "precision": "bf16"}, config)
    fig["feature_setup_s"] = round(timed(stage.setup), 1)
    bv = stage.batch_views
    x_all = preprocess(torch.from_numpy(np.stack([load_view(b, 518) for b in pngs])).to(dev))

    def model_only() -> None:
        for i in range(0, len(x_all), bv):
            stage.forward(x_all[i:i + bv])

    def stage_run(batch: list[AssetTask]) -> float:
        def go() -> None:
            for i in range(0, len(batch), stage.batch_size):
                bad = [r for r in stage.run_batch(batch[i:i + stage.batch_size], ctx) if isinstance(r, BaseException)]
                if bad:
                    raise bad[0]
        return timed(go) / len(batch)

    # the model alone under each SDPA kernel (eager), same batches as the stage
    if dev.type == "cuda":
        kernels = {}
        keep = stage.config["attention"]
        for k in ("flash", "efficient", "cudnn", "math"):
            stage.config["attention"] = k
            try:
                model_only()
                kernels[k] = round(statistics.median(timed(model_only) for _ in range(args.reps)), 4)
            except Exception as exc:  # a kernel this build or GPU lacks
                kernels[k] = f"unavailable: {type(exc).__name__}: {str(exc)[:120]}"
        stage.config["attention"] = keep
        fig["model_only_s_per_asset_by_sdpa_kernel"] = kernels
        print("kernels", json.dumps(kernels), flush=True)

    fig["compile_warmup_s"] = round(timed(model_only), 1)  # warm-up (and compile, if asked)
    stage_run(tasks[:1])
    mo, st = [], []
    for _ in range(args.reps):
        mo.append(timed(model_only))
        st.append(stage_run(tasks[1:]))
    stage.config["resize_on_device"] = False
    cpu_resize = stage_run(tasks[1:])
    stage.config["resize_on_device"] = True
    fig["feature"] = {
        "attention": args.attention, "compile": args.compile or False, "png_decoder": pngdecode.choose(),
        "model_only_s_per_asset": [round(v, 4) for v in mo], "stage_s_per_asset": [round(v, 4) for v in st],
        "model_only_median": round(statistics.median(mo), 4), "stage_median": round(statistics.median(st), 4),
        "stage_over_model": round(statistics.median(st) / statistics.median(mo), 3),
        "stage_with_pil_resize_on_cpu_s_per_asset": round(cpu_resize, 4),
        "assets_per_run": args.assets, "batch_views": bv, "goal_stage_over_model": 1.1, "goal_stage_s_per_asset": 0.45,
    }
    print("feature", json.dumps(fig["feature"]), flush=True)
    fig["parity_16_views"] = parity(stage, dino, store, ctx, pngs, x_all, idx, vox, args.views, dev)
    print("parity", json.dumps(fig["parity_16_views"]), flush=True)
    stage.close()

    # SS and SLat: released configs, random init, fp16 torso as released
    feat_rel = layout.features("dinov2_vitl14_reg", tasks[1].sha256)
    lat_tasks = []
    for a in range(args.latent_assets):
        s = sha(20_000 + a)
        store.write_bytes(layout.voxels(s), vox)
        frel = layout.features("dinov2_vitl14_reg", s)
        store.write_bytes(frel, store.read_bytes(feat_rel))
        lat_tasks.append(AssetTask(s, {}, {"voxelize": ArtifactRef(store.uri(layout.voxels(s))),
                                           "features": ArtifactRef(store.uri(frel))}))
    for label, st_obj in (("ss_latent", SSLatentStage({"model": str(encoders["ss_enc"])})),
                          ("slat", SLatStage({"model": str(encoders["slat_enc"]), "feature_model": "dinov2_vitl14_reg"}))):
        st_obj.setup()

        def run_all(st_obj=st_obj) -> None:
            for i in range(0, len(lat_tasks), st_obj.batch_size):
                bad = [r for r in st_obj.run_batch(lat_tasks[i:i + st_obj.batch_size], ctx) if isinstance(r, BaseException)]
                if bad:
                    raise bad[0]

        run_all()  # warm-up
        best = min(timed(run_all) for _ in range(max(2, args.reps)))
        fig[label] = {"assets": len(lat_tasks), "assets_per_s": round(len(lat_tasks) / best, 2),
                      "s_per_asset": round(best / len(lat_tasks), 5), "batch_size": st_obj.batch_size,
                      "precision": st_obj.params.precision}
        print(label, json.dumps(fig[label]), flush=True)
        if label == "slat" and dev.type == "cuda":  # where the SLat time goes
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                st_obj.run_batch(lat_tasks[:st_obj.batch_size], ctx)
                timed.sync()
            table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=50)
            print(table, flush=True)
            fig["slat_profile_top_cpu"] = table.splitlines()[:20]
        st_obj.close()
    lat = fig["ss_latent"]["s_per_asset"] + fig["slat"]["s_per_asset"]
    fig["latents_over_feature_stage"] = round(lat / fig["feature"]["stage_median"], 4)
    fig["latents_over_feature_model_only"] = round(lat / fig["feature"]["model_only_median"], 4)
    fig["goal_latents_over_feature"] = 0.10
    out = write_result("encode_gpu", fig, args.out)
    print(out.read_text())
    shutil.rmtree(work, ignore_errors=True)


def parity(stage, dino, store, ctx, pngs, x_all, idx, vox, views, dev) -> dict:
    """bf16 vs fp32 stage output, and the fp32 stage vs a plain per-view reference (first 16 views)."""
    import torch
    import torch.nn.functional as F
    from transformers import Dinov2WithRegistersModel

    from encode.features import FeatureStage
    from encode.projection import cameras_from_transforms, project_uv

    s = sha(10_000)
    nv = min(16, views)
    for i in range(nv):
        store.write_bytes(f"{layout.renders(s)}/{i:03d}.png", pngs[i])
    t16 = transforms(views)
    t16["frames"] = t16["frames"][:nv]
    store.write_bytes(f"{layout.renders(s)}/transforms.json", json.dumps(t16).encode())
    store.write_bytes(layout.voxels(s), vox)
    small = AssetTask(s, {}, {"render": ArtifactRef(store.uri(layout.renders(s))), "voxelize": ArtifactRef(store.uri(layout.voxels(s)))})

    def features(st) -> np.ndarray:
        r = st.run_batch([small], ctx)[0]
        if isinstance(r, BaseException):
            raise r
        return np.load(store.path(store.rel(r.uri)))["patchtokens"].astype(np.float32)

    out_bf16 = features(stage)
    fp32 = FeatureStage({"model": str(dino), "precision": "fp32"}, {"attention": stage.config.get("attention", "auto")})
    out_fp32 = features(fp32)
    fp32.close()
    width = out_fp32.shape[1]
    ref_model = Dinov2WithRegistersModel.from_pretrained(str(dino)).to(dev).eval()
    _, w2c, K = cameras_from_transforms(t16)
    pts = torch.from_numpy(((idx + 0.5) / 64 - 0.5).astype(np.float32)).to(dev)
    uv = project_uv(pts, torch.from_numpy(w2c), torch.from_numpy(K))
    acc = torch.zeros(len(idx), width, device=dev)
    g = 518 // 14
    with torch.no_grad():
        for v in range(nv):
            h = ref_model(pixel_values=x_all[v:v + 1], output_hidden_states=True).hidden_states[-1]
            tok = h[:, 5:].transpose(1, 2).reshape(1, width, g, g)
            acc += F.grid_sample(tok, (uv[v:v + 1] * 2 - 1)[:, None], mode="bilinear", padding_mode="zeros",
                                 align_corners=False)[0, :, 0].T
    ref = (acc / nv).half().float().cpu().numpy()
    return {"fp32_stage_vs_reference_max_abs": float(np.abs(out_fp32 - ref).max()),
            "bf16_vs_fp32_mean_abs": float(np.abs(out_bf16 - out_fp32).mean()),
            "bf16_vs_fp32_max_abs": float(np.abs(out_bf16 - out_fp32).max()),
            "feature_mean_abs": float(np.abs(ref).mean()), "feature_max_abs": float(np.abs(ref).max())}


if __name__ == "__main__":
    main()
