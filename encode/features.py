"""DINOv2 feature stage: `features/<model>/<sha256>.npz` (DATA_FORMATS §5, G11-G13, G19).

Per asset: every view of `renders/<sha>/` is resized to 518 px (PIL LANCZOS on the RGBA image),
premultiplied onto black, ImageNet-normalised and run through DINOv2-with-registers; the tokens are
the last block's output before the final LayerNorm (x_prenorm), CLS and registers dropped, as a
37x37 map. Every voxel centre is projected into every view and the map sampled there (see
`encode.projection`); the mean over views is taken in float32 and stored as float16.

Throughput: one actor holds the model; `run_batch` streams the views of all assets of the batch
through it in batches of `batch_views` (views of different assets share a batch). PNG decode and
resize run in a thread pool ahead of the model (bounded prefetch), uint8 pixels go to the device
and are normalised there, and the npz is compressed and published by a writer pool, so the device
does not wait on the CPU. A loader failure is a typed failure of that asset (or, for one view, a
skipped view as in the reference), and every wait has a time limit: nothing can hang (G19).

Params (fingerprinted): `model` (location, replaced by the weights hash), `name` (variant),
`image_size`, `precision` (`bf16` autocast, or `fp32` for parity checks), `resolution`.
Config (not fingerprinted): `device`, `batch_views`, `loader_threads`, `writer_threads`,
`view_timeout_s`, `prefetch_views`, `npz_compresslevel` (deflate level, default 1), `resize_on_device` (default: on a GPU). With it the loader
only decodes the PNG and the 518 px LANCZOS resize runs on the device with Pillow's exact integer
algorithm (`encode.resample`), which takes most of the CPU cost off the loader.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import io
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catalogs import layout
from catalogs.stage import (
    AssetTask, CorruptFile, MissingUpstream, ModelConfigMismatch, NonFinite, Resources, StageContext, StageResult,
)
from encode.modelstage import ModelStage
from encode.npzio import DEFAULT_LEVEL, write_npz
from encode.plyio import read_points_ply
from encode.projection import cameras_from_transforms, project_uv, sum_sampled, token_grid, voxel_indices

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


def decode_view(data: bytes) -> np.ndarray:
    """uint8 (H, W, 4): the PNG as RGBA at its own size (resized later on the device, bit-exact)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()


def preprocess(pixels, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """uint8 RGBA (B, S, S, 4) tensor -> normalised float32 (B, 3, S, S): /255, RGB*A, ImageNet."""
    import torch

    x = pixels.to(torch.float32) / 255.0
    rgb = x[..., :3] * x[..., 3:4]
    m = torch.tensor(mean, dtype=torch.float32, device=x.device)
    s = torch.tensor(std, dtype=torch.float32, device=x.device)
    return ((rgb - m) / s).permute(0, 3, 1, 2).contiguous()


@dataclass
class _Asset:
    """One asset in flight through `run_batch`."""

    i: int
    task: AssetTask
    render_rel: str
    names: list[str]
    indices: np.ndarray
    uv: Any  # torch (V, N, 2) on the device
    acc: Any = None  # torch (C, N) float32
    loaded: int = 0
    pending: int = 0
    skipped: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


class FeatureStage(ModelStage):
    name = "features"
    version = "1"
    upstream = ("render", "voxelize")
    resources = Resources(num_cpus=2.0, num_gpus=1.0)
    batch_size = 8
    timeout_s = 900.0
    model_family = "dinov2"

    @dataclass(frozen=True)
    class Params:
        model: str = "facebook/dinov2-with-registers-large"
        name: str | None = None
        image_size: int = 518
        precision: str = "bf16"
        resolution: int = 64

        def __post_init__(self) -> None:
            if self.precision not in ("bf16", "fp32"):
                raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model = None
        self._loader: cf.ThreadPoolExecutor | None = None
        self._writer: cf.ThreadPoolExecutor | None = None
        self._config_error: str | None = None

    # settings -----------------------------------------------------------------------------------
    def _cfg(self, key: str, cpu: Any, gpu: Any) -> Any:
        return self.config.get(key, gpu if self.device.type == "cuda" else cpu)

    @property
    def batch_views(self) -> int:
        return int(self._cfg("batch_views", 8, 64))

    @property
    def resize_on_device(self) -> bool:
        return bool(self._cfg("resize_on_device", False, True))

    def to_model_size(self, arrays: list[np.ndarray]):
        """Stack loaded views onto the device at image_size x image_size (uint8 RGBA)."""
        import torch

        from encode.resample import resize_rgba

        dev, size = self.device, self.params.image_size
        if len({a.shape for a in arrays}) == 1:
            host = torch.from_numpy(np.stack(arrays))
            if dev.type == "cuda":
                host = host.pin_memory()
            return resize_rgba(host.to(dev, non_blocking=True), size)
        return torch.cat([resize_rgba(torch.from_numpy(a[None]).to(dev), size) for a in arrays])

    @property
    def view_timeout_s(self) -> float:
        return float(self.config.get("view_timeout_s", 60.0))

    # lifecycle ----------------------------------------------------------------------------------
    def setup(self) -> None:
        if self._loader is None:
            self._loader = cf.ThreadPoolExecutor(int(self._cfg("loader_threads", 2, 12)), thread_name_prefix="feat-load")
            self._writer = cf.ThreadPoolExecutor(int(self._cfg("writer_threads", 1, 8)), thread_name_prefix="feat-write")
        if self.model is None:
            self.model = self.load_model()

    def load_model(self):
        """The DINOv2 model on the device, returning x_prenorm as `last_hidden_state` (final norm removed)."""
        import torch
        from transformers import AutoConfig, Dinov2WithRegistersModel

        path = str(self.model_ref.path)
        cfg = AutoConfig.from_pretrained(path)
        if cfg.model_type != "dinov2_with_registers":
            self._config_error = f"{self.params.model}: model_type {cfg.model_type!r}, expected 'dinov2_with_registers'"
            return None
        try:
            token_grid(self.params.image_size, cfg.patch_size)
        except ValueError as exc:
            self._config_error = str(exc)
            return None
        model = Dinov2WithRegistersModel.from_pretrained(path, attn_implementation="sdpa")
        # x_prenorm = the input of the final LayerNorm (= hidden_states[-1]); dropping the norm gives it
        # as last_hidden_state without keeping every layer's hidden state alive.
        model.layernorm = torch.nn.Identity()
        return model.eval().requires_grad_(False).to(self.device)

    def close(self) -> None:
        for pool in (self._loader, self._writer):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._loader = self._writer = None

    # model ----------------------------------------------------------------------------------------
    def tokens(self, pixels):
        """uint8 RGBA (B, S, S, 4) on the device -> float32 patch-token maps (B, C, G, G)."""
        import torch

        x = preprocess(pixels)
        cfg = self.model.config
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.params.precision == "bf16"):
            h = self.model(pixel_values=x).last_hidden_state
        g = token_grid(self.params.image_size, cfg.patch_size)
        patches = h[:, 1 + cfg.num_register_tokens:, :]
        if patches.shape[1] != g * g:
            raise ModelConfigMismatch(f"model returned {patches.shape[1]} patch tokens, expected {g}x{g}")
        return patches.transpose(1, 2).reshape(h.shape[0], h.shape[2], g, g).float()

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

    def run_batch(self, tasks, ctx: StageContext) -> list:
        import torch

        self.setup()
        results: list[Any] = [None] * len(tasks)
        if self.model is None:
            return [ModelConfigMismatch(self._config_error or "model not loaded") for _ in tasks]
        dev = self.device
        size = self.params.image_size
        loader = self._loader
        preps = [loader.submit(self._prepare, t, ctx) for t in tasks]

        def view_futures():
            """(asset, view index, future) in order, submitted lazily by the consumer below."""
            for i, fut in enumerate(preps):
                try:
                    render_rel, names, w2c, K, points, indices = fut.result(timeout=self.view_timeout_s)
                    uv = project_uv(torch.from_numpy(points).to(dev), torch.from_numpy(w2c), torch.from_numpy(K))
                except cf.TimeoutError:
                    results[i] = MissingUpstream(f"{tasks[i].sha256[:12]}: reading upstream files timed out")
                    continue
                except Exception as exc:
                    results[i] = exc
                    continue
                a = _Asset(i, tasks[i], render_rel, names, indices, uv, pending=len(names))
                for v, name in enumerate(names):
                    yield a, v, name

        on_device = self.resize_on_device

        def read(rel: str) -> np.ndarray:
            data = ctx.store.read_bytes(rel)
            return decode_view(data) if on_device else load_view(data, size)

        prefetch = int(self.config.get("prefetch_views", max(2 * self.batch_views, 32)))
        window: collections.deque = collections.deque()
        stream = view_futures()
        exhausted = False

        def fill() -> None:
            nonlocal exhausted
            while not exhausted and len(window) < prefetch:
                try:
                    a, v, name = next(stream)
                except StopIteration:
                    exhausted = True
                    return
                window.append((a, v, name, loader.submit(read, f"{a.render_rel}/{name}")))

        writes: list[tuple[int, cf.Future]] = []
        try:
            fill()
            while window:
                batch = []
                while window and len(batch) < self.batch_views:
                    a, v, name, fut = window.popleft()
                    try:
                        arr = fut.result(timeout=self.view_timeout_s)
                    except Exception as exc:  # unreadable view: skipped, as in the reference (§5 step 4)
                        fut.cancel()
                        a.skipped.append(f"{name}: {type(exc).__name__}: {exc}"[:200])
                        a.pending -= 1
                        if a.pending == 0:
                            writes.append((a.i, self._finish(a, ctx)))
                        continue
                    batch.append((a, v, arr))
                    fill()
                fill()
                if not batch:
                    continue
                toks = self.tokens(self.to_model_size([arr for _, _, arr in batch]))
                j = 0
                while j < len(batch):  # consecutive views of one asset
                    a = batch[j][0]
                    k = j
                    while k < len(batch) and batch[k][0] is a:
                        k += 1
                    vidx = torch.tensor([v for _, v, _ in batch[j:k]], device=dev)
                    part = sum_sampled(toks[j:k], a.uv[vidx])
                    a.acc = part if a.acc is None else a.acc + part
                    a.loaded += k - j
                    a.pending -= k - j
                    if a.pending == 0:
                        writes.append((a.i, self._finish(a, ctx)))
                    j = k
        except Exception as exc:  # e.g. out of memory: every asset without a result fails with it
            log.warning("feature batch failed: %s: %s", type(exc).__name__, exc)
            for _, _, _, fut in window:
                fut.cancel()
            for i in range(len(tasks)):
                if results[i] is None and all(w[0] != i for w in writes):
                    results[i] = exc
        for i, fut in writes:
            try:
                results[i] = fut.result(timeout=max(60.0, self.timeout_s))
            except Exception as exc:
                results[i] = exc
        return [r if r is not None else RuntimeError("feature stage produced no result") for r in results]

    def _finish(self, a: _Asset, ctx: StageContext) -> cf.Future:
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

    def _write(self, a: _Asset, ctx: StageContext, host, flag, event) -> StageResult:
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
