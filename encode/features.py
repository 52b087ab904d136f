"""DINOv2 feature stage: `features/<model>/<sha256>.npz` (DATA_FORMATS §5, G11-G13, G19).

Per asset: every view of `renders/<sha>/` is resized to 518 px (PIL LANCZOS on the RGBA image),
premultiplied onto black, ImageNet-normalised and run through DINOv2-with-registers; the tokens are
the last block's output before the final LayerNorm (x_prenorm), CLS and registers dropped, as a
37x37 map. Every voxel centre is projected into every view and the map sampled there (see
`encode.projection`); the mean over views is taken in float32 and stored as float16.

Throughput: one actor holds the model; `run_batch` streams the views of all assets of the batch
through it in batches of `batch_views` (views of different assets share a batch). A feeder thread
(`encode.viewfeed`) reads, decodes, uploads, resizes and normalises batch k+1 on its own CUDA stream
while the model runs batch k, and the npz is compressed and published by a writer pool, so the
device waits neither on the CPU nor on a host synchronisation. A loader failure is a typed failure
of that asset (or, for one view, a skipped view as in the reference), and every wait has a time
limit: nothing can hang (G19).

Params (fingerprinted, catalogs.modelstage): `model` (location, replaced by the weights hash),
`name` (variant), `image_size`, `precision` (`bf16` autocast, or `fp32`), `resolution`.
Config (not fingerprinted): `device`, `batch_views`, `loader_threads`, `writer_threads`,
`view_timeout_s`, `prefetch_views`, `npz_compresslevel` (deflate level, default 1),
`png_decoder` (`auto` | `cv2` | `torchvision` | `pil`: the same pixels, `encode.pngdecode`),
`resize_on_device` (default: on a GPU; the 518 px LANCZOS resize then runs on the device with
Pillow's exact integer algorithm, `encode.resample`), `attention` (SDPA kernel: `auto` | `flash` |
`efficient` | `cudnn` | `math`) and `compile` (`torch.compile` mode, or false; partial batches are
padded to `batch_views` so one graph serves all).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalogs import layout
from catalogs.stage import (
    AssetTask, CorruptFile, MissingUpstream, ModelConfigMismatch, NonFinite, Resources, StageContext, StageResult,
)
from catalogs.modelstage import ModelStage
from encode import pngdecode
from encode.npzio import DEFAULT_LEVEL, write_npz
from encode.plyio import read_points_ply
from encode.projection import cameras_from_transforms, project_uv, sum_sampled, token_grid, voxel_indices
from encode.viewfeed import FeedAsset, ViewFeed
from trellis_core.locations import TRANSFORMERS

log = logging.getLogger("trellis_data.features")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# -- CPU side: files -> arrays ------------------------------------------------------------------
def load_view(data: bytes, size: int) -> np.ndarray:
    """uint8 (size, size, 4): the PNG as RGBA, resized with LANCZOS (PIL resamples RGBA premultiplied)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGBA")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


@functools.lru_cache(maxsize=8)
def _stats(device):
    import torch

    return (torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device),
            torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device))


def preprocess(pixels):
    """uint8 RGBA (B, S, S, 4) tensor -> normalised float32 (B, 3, S, S): /255, RGB*A, ImageNet."""
    import torch

    x = pixels.to(torch.float32) / 255.0
    rgb = x[..., :3] * x[..., 3:4]
    m, s = _stats(x.device)
    return ((rgb - m) / s).permute(0, 3, 1, 2).contiguous()


class FeatureStage(ModelStage):
    name = "features"
    version = "1"
    upstream = ("render", "voxelize")
    resources = Resources(num_cpus=2.0, num_gpus=1.0)
    batch_size = 8
    timeout_s = 900.0
    models = {"model": TRANSFORMERS}
    precisions = ("bf16", "fp32")

    @dataclass(frozen=True)
    class Params:
        model: str = "facebook/dinov2-with-registers-large"
        name: str | None = None
        image_size: int = 518
        precision: str = "bf16"
        resolution: int = 64

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loader: cf.ThreadPoolExecutor | None = None
        self._writer: cf.ThreadPoolExecutor | None = None
        self._compiled = False

    # settings -----------------------------------------------------------------------------------
    def _cfg(self, key: str, cpu: Any, gpu: Any) -> Any:
        return self.config.get(key, gpu if self.device.type == "cuda" else cpu)

    @property
    def batch_views(self) -> int:
        return int(self._cfg("batch_views", 8, 64))

    @property
    def resize_on_device(self) -> bool:
        return bool(self._cfg("resize_on_device", False, True))

    def upload(self, arrays: list[np.ndarray]):
        """Loaded views -> model input (B, 3, S, S) float32 on the device (the feeder thread's work:
        pinned stack, copy, exact LANCZOS resize where the loader did not, normalisation)."""
        import torch

        from encode.resample import resize_rgba

        dev, size = self.device, self.params.image_size
        if len({a.shape for a in arrays}) == 1:
            host = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, pin_memory=dev.type == "cuda")
            np.stack(arrays, out=host.numpy())
            pixels = resize_rgba(host.to(dev, non_blocking=True), size)
        else:
            pixels = torch.cat([resize_rgba(torch.from_numpy(a[None]).to(dev), size) for a in arrays])
        return preprocess(pixels)

    @property
    def view_timeout_s(self) -> float:
        return float(self.config.get("view_timeout_s", 60.0))

    # lifecycle ----------------------------------------------------------------------------------
    def setup(self) -> None:
        if self._loader is None:
            self._loader = cf.ThreadPoolExecutor(int(self._cfg("loader_threads", 2, 12)), thread_name_prefix="feat-load")
            self._writer = cf.ThreadPoolExecutor(int(self._cfg("writer_threads", 1, 8)), thread_name_prefix="feat-write")
        super().setup()

    def load_model(self):
        """The DINOv2 model on the device, returning x_prenorm as `last_hidden_state` (final norm removed)."""
        import torch
        from transformers import AutoConfig, Dinov2WithRegistersModel

        path = str(self.model_ref().path)
        cfg = AutoConfig.from_pretrained(path)
        if cfg.model_type != "dinov2_with_registers":
            raise ModelConfigMismatch(f"{self.params.model}: model_type {cfg.model_type!r}, expected 'dinov2_with_registers'")
        try:
            token_grid(self.params.image_size, cfg.patch_size)
        except ValueError as exc:
            raise ModelConfigMismatch(f"{self.params.model}: {exc}") from None
        model = Dinov2WithRegistersModel.from_pretrained(path, attn_implementation="sdpa")
        # x_prenorm = the input of the final LayerNorm (= hidden_states[-1]); dropping the norm gives it
        # as last_hidden_state without keeping every layer's hidden state alive.
        model.layernorm = torch.nn.Identity()
        model = model.eval().requires_grad_(False).to(self.device)
        mode = self.config.get("compile", False)
        if mode:
            model = torch.compile(model, mode=None if mode is True else str(mode), dynamic=False)
            self._compiled = True
        return model

    def close(self) -> None:
        for pool in (self._loader, self._writer):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._loader = self._writer = None

    # model ----------------------------------------------------------------------------------------
    def tokens(self, pixels):
        """uint8 RGBA (B, S, S, 4) on the device -> float32 patch-token maps (B, C, G, G)."""
        return self.forward(preprocess(pixels))

    def forward(self, x):
        """Normalised (B, 3, S, S) -> float32 patch-token maps (B, C, G, G), in the stage's precision."""
        import torch

        cfg = self.model.config
        n = x.shape[0]
        if self._compiled and n < self.batch_views:  # one graph for every batch: pad the last one
            x = torch.cat([x, x.new_zeros((self.batch_views - n, *x.shape[1:]))])
        with torch.no_grad(), self._attention(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                               enabled=self.params.precision == "bf16"):
            h = self.model(pixel_values=x).last_hidden_state[:n]
        g = token_grid(self.params.image_size, cfg.patch_size)
        patches = h[:, 1 + cfg.num_register_tokens:, :]
        if patches.shape[1] != g * g:
            raise ModelConfigMismatch(f"model returned {patches.shape[1]} patch tokens, expected {g}x{g}")
        return patches.transpose(1, 2).reshape(n, h.shape[2], g, g).float()

    def _attention(self):
        """The SDPA kernel config `attention` asks for (`auto`: PyTorch's own choice)."""
        want = str(self.config.get("attention", "auto"))
        if want == "auto" or self.device.type != "cuda":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernels = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
        return sdpa_kernel(kernels[want])

    # work -----------------------------------------------------------------------------------------
    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        out = self.run_batch([task], ctx)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def _prepare(self, task: AssetTask, ctx: StageContext) -> tuple:
        """(render dir, view names, w2c, K, voxel centres, voxel indices); typed failures."""
        render_rel = ctx.store.rel(task.input("render").uri).rstrip("/")
        vox_rel = ctx.store.rel(task.input("voxelize").uri)
        try:
            transforms = json.loads(ctx.store.read_bytes(f"{render_rel}/transforms.json"))
        except FileNotFoundError:
            raise MissingUpstream(f"{task.sha256[:12]}: {render_rel}/transforms.json does not exist") from None
        except (ValueError, OSError) as exc:
            raise CorruptFile(f"{task.sha256[:12]}: unreadable transforms.json: {exc}") from exc
        try:
            names, w2c, K = cameras_from_transforms(transforms)
        except (KeyError, TypeError, ValueError, np.linalg.LinAlgError) as exc:
            raise CorruptFile(f"{task.sha256[:12]}: bad transforms.json: {type(exc).__name__}: {exc}") from exc
        try:
            points = read_points_ply(ctx.store.read_bytes(vox_rel))
        except FileNotFoundError:
            raise MissingUpstream(f"{task.sha256[:12]}: {vox_rel} does not exist") from None
        except (ValueError, OSError) as exc:
            raise CorruptFile(f"{task.sha256[:12]}: unreadable voxel ply: {exc}") from exc
        if not len(points):
            raise CorruptFile(f"{task.sha256[:12]}: voxel ply has no points")
        try:
            indices = voxel_indices(points, self.params.resolution)
        except ValueError as exc:
            raise CorruptFile(f"{task.sha256[:12]}: {exc}") from exc
        return render_rel, names, w2c, K, points, indices

    def _make_asset(self, i: int, task: AssetTask, prepared: tuple) -> FeedAsset:
        """An asset ready to stream: voxel centres projected into every view (on the feeder's stream)."""
        import torch

        render_rel, names, w2c, K, points, indices = prepared
        pinned = self.device.type == "cuda"  # pageable copies would synchronise the stream
        pts, w2c, K = (torch.from_numpy(np.ascontiguousarray(a)) for a in (points, w2c, K))
        if pinned:
            pts, w2c, K = pts.pin_memory(), w2c.pin_memory(), K.pin_memory()
        dev = self.device
        uv = project_uv(pts.to(dev, non_blocking=True), w2c.to(dev, non_blocking=True), K.to(dev, non_blocking=True))
        return FeedAsset(i, task, render_rel, names, indices, uv)

    def run_batch(self, tasks, ctx: StageContext) -> list:
        import torch

        failed = self.failed_setup(tasks)
        if failed:
            return failed
        results: list[Any] = [None] * len(tasks)
        size = self.params.image_size
        on_device = self.resize_on_device
        decoder = pngdecode.choose(str(self.config.get("png_decoder", "auto")))

        def read(rel: str) -> np.ndarray:
            data = ctx.store.read_bytes(rel)
            return pngdecode.decode_rgba(data, decoder) if on_device else load_view(data, size)

        def on_failed(i: int, exc: BaseException) -> None:
            results[i] = exc

        feed = ViewFeed([self._loader.submit(self._prepare, t, ctx) for t in tasks], tasks, device=self.device,
                        loader=self._loader, make_asset=self._make_asset, read=read, upload=self.upload,
                        on_failed=on_failed, batch_views=self.batch_views,
                        prefetch=int(self.config.get("prefetch_views", 2 * self.batch_views)),
                        timeout_s=self.view_timeout_s)
        writes: list[tuple[int, cf.Future]] = []
        try:
            for batch in feed:
                if batch.rows:
                    toks = self.forward(batch.pixels)
                    j = 0
                    while j < len(batch.rows):  # consecutive rows of one asset
                        a = batch.rows[j][0]
                        k = j
                        while k < len(batch.rows) and batch.rows[k][0] is a:
                            k += 1
                        views = [v for _, v in batch.rows[j:k]]
                        if views[-1] - views[0] == k - j - 1:
                            uv = a.uv[views[0]:views[-1] + 1]
                        else:  # a skipped view left a gap
                            uv = a.uv[torch.tensor(views).to(self.device, non_blocking=True)]
                        part = sum_sampled(toks[j:k], uv)
                        a.acc = part if a.acc is None else a.acc + part
                        a.loaded += k - j
                        j = k
                for a in batch.done:
                    writes.append((a.i, self._finish(a, ctx)))
        except Exception as exc:  # e.g. out of memory: every asset without a result fails with it
            log.warning("feature batch failed: %s: %s", type(exc).__name__, exc)
            written = {i for i, _ in writes}
            for i in range(len(tasks)):
                if results[i] is None and i not in written:
                    results[i] = exc
        finally:
            feed.close()
        for i, fut in writes:
            try:
                results[i] = fut.result(timeout=max(60.0, self.timeout_s))
            except Exception as exc:
                results[i] = exc
        return [r if r is not None else RuntimeError("feature stage produced no result") for r in results]

    def _finish(self, a: FeedAsset, ctx: StageContext) -> cf.Future:
        """Mean over the loaded views -> float16, then compress and publish in the writer pool."""
        import torch

        if a.loaded == 0 or a.acc is None:
            err = CorruptFile(f"{a.task.sha256[:12]}: none of the {len(a.names)} views could be read "
                              f"({'; '.join(a.skipped[:3])})")
            f: cf.Future = cf.Future()
            f.set_exception(err)
            return f
        mean = (a.acc / a.loaded).T.to(torch.float16)
        finite = torch.isfinite(a.acc).all()
        if mean.device.type == "cuda":
            host = torch.empty(mean.shape, dtype=mean.dtype, pin_memory=True)
            host.copy_(mean, non_blocking=True)
            flag = finite.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, flag, event = mean, finite, None
        return self._writer.submit(self._write, a, ctx, host, flag, event)

    def _write(self, a: FeedAsset, ctx: StageContext, host, flag, event) -> StageResult:
        if event is not None:
            event.synchronize()
        if not bool(flag):
            raise NonFinite(f"{a.task.sha256[:12]}: non-finite feature values")
        feats = host.numpy()
        if feats.shape[0] != len(a.indices):
            raise RuntimeError("feature rows do not match the voxel count")
        rel = layout.features(self.variant, a.task.sha256)
        with ctx.store.staged_file(rel) as local:
            with open(local, "wb") as fh:
                write_npz(fh, int(self.config.get("npz_compresslevel", DEFAULT_LEVEL)), indices=a.indices,
                          patchtokens=feats)
            nbytes = local.stat().st_size
        metrics = {"num_voxels": int(len(a.indices)), "n_views": a.loaded, "n_views_listed": len(a.names),
                   "feature_dim": int(feats.shape[1]), "model": self.variant, "precision": self.params.precision}
        if a.skipped:
            metrics["skipped_views"] = a.skipped[:20]
        return StageResult(uri=ctx.store.uri(rel), bytes=nbytes, metrics=metrics)
