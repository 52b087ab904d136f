"""SS latent and SLat stages (DATA_FORMATS §6, §7): trellis_core encoders, batched on one actor.

- `SSLatentStage` ("ss_latent"): `voxels/<sha>.ply` -> 64^3 occupancy -> SparseStructureEncoder
  (posterior mean) -> `ss_latents/<model>/<sha>.npz` with `mean` float32 (8, 16, 16, 16), [c, x, y, z].
- `SLatStage` ("slat"): `features/<feat_model>/<sha>.npz` -> SLatEncoder (posterior mean) ->
  `latents/<feat_model>_<model>/<sha>.npz` with `feats` float32 (N, 8) and `coords` uint8 (N, 3), in
  the features' (= voxel ply's) row order. Assets are packed into one sparse batch up to
  `max_tokens` voxels.

A non-finite latent is `NonFinite`; a missing upstream file `MissingUpstream`; a model whose config
does not fit the data (input channels, class, resolution, or SLat fed by another feature model)
`ModelConfigMismatch`. All are per asset: one bad asset never fails its batch-mates.

Precision: the released encoders are built with an fp16 torso; on a CPU device the torso runs in
fp32 (config `torso_dtype`: `auto` | `fp16` | `bf16` | `fp32`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalogs import layout
from catalogs.stage import (
    AssetTask, CorruptFile, MissingUpstream, ModelConfigMismatch, NonFinite, Resources, StageContext, StageResult,
)
from encode.modelstage import ModelStage
from encode.npzio import DEFAULT_LEVEL, npz_bytes
from encode.plyio import read_points_ply
from encode.projection import voxel_indices

log = logging.getLogger("trellis_data.latents")


def _torso_dtype(name: str, device):
    import torch

    if name == "auto":
        return None if device.type == "cuda" else torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


class _EncoderStage(ModelStage):
    model_family = "trellis"
    expected_class: str = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.model = None
        self._config_error: str | None = None

    def setup(self) -> None:
        if self.model is not None or self._config_error is not None:
            return
        from trellis_core import from_pretrained, load_model_config

        stem = str(self.model_ref.path)
        cfg = load_model_config(stem)
        err = self.check_config(cfg)
        if err:
            self._config_error = f"{self.params.model}: {err}"
            return
        model = from_pretrained(stem, device=self.device)
        dtype = _torso_dtype(str(self.config.get("torso_dtype", "auto")), self.device)
        if dtype is not None and hasattr(model, "convert_torso"):
            model.convert_torso(dtype)
        self.model = model.eval().requires_grad_(False)

    def check_config(self, cfg: dict[str, Any]) -> str | None:
        name = cfg.get("name")
        aliases = {self.expected_class, "Elastic" + self.expected_class}
        if name not in aliases:
            return f"checkpoint holds a {name!r}, expected {self.expected_class}"
        return None

    def _failed_all(self, tasks) -> list | None:
        self.setup()
        if self._config_error:
            return [ModelConfigMismatch(self._config_error) for _ in tasks]
        return None

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        out = self.run_batch([task], ctx)[0]
        if isinstance(out, BaseException):
            raise out
        return out

    @staticmethod
    def _read(ctx: StageContext, task: AssetTask, stage: str) -> tuple[str, bytes]:
        rel = ctx.store.rel(task.input(stage).uri)
        try:
            return rel, ctx.store.read_bytes(rel)
        except FileNotFoundError:
            raise MissingUpstream(f"{task.sha256[:12]}: {rel} does not exist") from None

    def _publish(self, ctx: StageContext, rel: str, **arrays) -> int:
        level = int(self.config.get("npz_compresslevel", DEFAULT_LEVEL))
        return ctx.store.write_bytes(rel, npz_bytes(level, **arrays))

    def _map(self, fn, items: list) -> list:
        """fn over items in a thread pool (npz decompression releases the GIL); exceptions as values."""
        import concurrent.futures as cf

        def safe(it):
            try:
                return fn(it)
            except Exception as exc:
                return exc

        threads = int(self.config.get("loader_threads", 8 if self.device.type == "cuda" else 2))
        if threads <= 1 or len(items) <= 1:
            return [safe(it) for it in items]
        with cf.ThreadPoolExecutor(threads) as pool:
            return list(pool.map(safe, items))


class SSLatentStage(_EncoderStage):
    name = "ss_latent"
    version = "1"
    upstream = ("voxelize",)
    resources = Resources(num_cpus=1.0, num_gpus=1.0)
    batch_size = 32
    timeout_s = 300.0
    expected_class = "SparseStructureEncoder"

    @dataclass(frozen=True)
    class Params:
        model: str = "microsoft/TRELLIS-image-large/ckpts/ss_enc_conv3d_16l8_fp16"
        name: str | None = None
        resolution: int = 64

    def check_config(self, cfg: dict[str, Any]) -> str | None:
        err = super().check_config(cfg)
        if err:
            return err
        args = cfg.get("args", {})
        if args.get("in_channels") != 1:
            return f"in_channels {args.get('in_channels')}, expected 1 (binary occupancy)"
        down = 2 ** (len(args.get("channels", [])) - 1)
        if self.params.resolution % down:
            return f"resolution {self.params.resolution} is not divisible by the encoder's downsampling {down}"
        return None

    def _occupancy(self, task: AssetTask, ctx: StageContext) -> np.ndarray:
        rel, data = self._read(ctx, task, "voxelize")
        try:
            idx = voxel_indices(read_points_ply(data), self.params.resolution)
        except ValueError as exc:
            raise CorruptFile(f"{task.sha256[:12]}: {rel}: {exc}") from exc
        if not len(idx):
            raise CorruptFile(f"{task.sha256[:12]}: {rel} has no voxels")
        return idx

    def run_batch(self, tasks, ctx: StageContext) -> list:
        import torch

        failed = self._failed_all(tasks)
        if failed:
            return failed
        res = self.params.resolution
        out: list[Any] = [None] * len(tasks)
        good: list[tuple[int, np.ndarray]] = []
        for i, r in enumerate(self._map(lambda t: self._occupancy(t, ctx), list(tasks))):
            if isinstance(r, Exception):
                out[i] = r
            else:
                good.append((i, r))
        chunk = int(self.config.get("encode_batch", 16 if self.device.type == "cuda" else 4))
        for s in range(0, len(good), chunk):
            part = good[s:s + chunk]
            try:
                x = torch.zeros(len(part), 1, res, res, res, dtype=torch.float32, device=self.device)
                for b, (_, idx) in enumerate(part):
                    ii = torch.from_numpy(idx.astype(np.int64)).to(self.device)
                    x[b, 0, ii[:, 0], ii[:, 1], ii[:, 2]] = 1.0
                with torch.no_grad():
                    z = self.model(x, sample_posterior=False).float()
                finite = torch.isfinite(z.flatten(1)).all(1).cpu().numpy()
                z = z.cpu().numpy()
            except Exception as exc:
                for i, _ in part:
                    out[i] = exc
                continue
            for b, (i, idx) in enumerate(part):
                try:
                    if not finite[b]:
                        raise NonFinite(f"{tasks[i].sha256[:12]}: SS latent is not finite")
                    rel = layout.ss_latents(self.variant, tasks[i].sha256)
                    n = self._publish(ctx, rel, mean=np.ascontiguousarray(z[b], dtype=np.float32))
                    out[i] = StageResult(uri=ctx.store.uri(rel), bytes=n, metrics={
                        "shape": list(z[b].shape), "num_voxels": int(len(idx)), "model": self.variant})
                except Exception as exc:
                    out[i] = exc
        return out


class SLatStage(_EncoderStage):
    name = "slat"
    version = "1"
    upstream = ("features",)
    resources = Resources(num_cpus=1.0, num_gpus=1.0)
    batch_size = 32
    timeout_s = 300.0
    expected_class = "SLatEncoder"

    @dataclass(frozen=True)
    class Params:
        model: str = "microsoft/TRELLIS-image-large/ckpts/slat_enc_swin8_B_64l8_fp16"
        name: str | None = None
        feature_model: str = "dinov2_vitl14_reg"
        """The feature variant this SLat is encoded from; part of the variant name (DATA_FORMATS §0)."""

    @property
    def variant(self) -> str:
        return f"{self.params.feature_model}_{self.model_name}"

    @property
    def in_channels(self) -> int:
        return int(self.model.config["in_channels"]) if self.model is not None else -1

    def _load(self, task: AssetTask, ctx: StageContext) -> tuple[np.ndarray, np.ndarray]:
        rel, data = self._read(ctx, task, "features")
        parts = rel.split("/")
        if len(parts) >= 3 and parts[-3] == "features" and parts[-2] != self.params.feature_model:
            raise ModelConfigMismatch(f"{task.sha256[:12]}: features come from model {parts[-2]!r} but this SLat "
                                      f"stage is configured for feature_model {self.params.feature_model!r}")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                indices, tokens = z["indices"], z["patchtokens"]
        except (ValueError, KeyError, OSError, EOFError) as exc:
            raise CorruptFile(f"{task.sha256[:12]}: unreadable features npz: {type(exc).__name__}: {exc}") from exc
        if indices.ndim != 2 or indices.shape[1] != 3 or tokens.ndim != 2 or len(tokens) != len(indices):
            raise CorruptFile(f"{task.sha256[:12]}: features npz shapes {indices.shape} / {tokens.shape}")
        if tokens.shape[1] != self.in_channels:
            raise ModelConfigMismatch(f"{task.sha256[:12]}: features have {tokens.shape[1]} channels, the SLat "
                                      f"encoder expects {self.in_channels}")
        if not len(indices):
            raise CorruptFile(f"{task.sha256[:12]}: features npz has no voxels")
        return indices, tokens

    def run_batch(self, tasks, ctx: StageContext) -> list:
        import torch

        from trellis_core import SparseTensor

        failed = self._failed_all(tasks)
        if failed:
            return failed
        out: list[Any] = [None] * len(tasks)
        loaded: list[tuple[int, np.ndarray, np.ndarray]] = []
        for i, r in enumerate(self._map(lambda t: self._load(t, ctx), list(tasks))):
            if isinstance(r, Exception):
                out[i] = r
            else:
                loaded.append((i, *r))
        max_tokens = int(self.config.get("max_tokens", 200_000 if self.device.type == "cuda" else 40_000))
        for group in pack_by_tokens(loaded, max_tokens):
            try:
                coords = np.concatenate([np.concatenate([np.full((len(ix), 1), b, np.int32), ix.astype(np.int32)], 1)
                                         for b, (_, ix, _) in enumerate(group)])
                # float16 goes over the bus and is widened to float32 (the reference's input) on the device
                feats = torch.from_numpy(np.concatenate([tk for _, _, tk in group]))
                x = SparseTensor(feats.to(self.device).float(), torch.from_numpy(coords).to(self.device))
                with torch.no_grad():
                    z = self.model(x, sample_posterior=False)
                if not torch.equal(z.coords, x.coords):
                    raise RuntimeError("SLat encoder changed the voxel order")
                zf = z.feats.float()
                row_ok = torch.isfinite(zf).all(1).cpu().numpy()
                zf = zf.cpu().numpy()
                lay = z.layout
                finite = [bool(row_ok[s].all()) for s in lay]
            except Exception as exc:
                for i, _, _ in group:
                    out[i] = exc
                continue
            for b, (i, ix, _) in enumerate(group):
                try:
                    if not finite[b]:
                        raise NonFinite(f"{tasks[i].sha256[:12]}: SLat latent is not finite")
                    rel = layout.latents(self.variant, tasks[i].sha256)
                    n = self._publish(ctx, rel, feats=np.ascontiguousarray(zf[lay[b]], dtype=np.float32),
                                      coords=ix.astype(np.uint8))
                    out[i] = StageResult(uri=ctx.store.uri(rel), bytes=n, metrics={
                        "num_voxels": int(len(ix)), "latent_channels": int(zf.shape[1]), "model": self.variant})
                except Exception as exc:
                    out[i] = exc
        return out


def pack_by_tokens(items: list[tuple], max_tokens: int) -> list[list[tuple]]:
    """Greedy packing of (i, indices, tokens) items into groups of at most `max_tokens` voxels
    (largest first; an item larger than the limit gets a group of its own)."""
    groups: list[list[tuple]] = []
    current: list[tuple] = []
    n = 0
    for item in sorted(items, key=lambda it: -len(it[1])):
        if current and n + len(item[1]) > max_tokens:
            groups.append(current)
            current, n = [], 0
        current.append(item)
        n += len(item[1])
    if current:
        groups.append(current)
    return groups
