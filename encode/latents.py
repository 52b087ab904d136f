"""SS latent and SLat stages (DATA_FORMATS §6, §7): trellis_core encoders, batched on one actor.

- `SSLatentStage` ("ss_latent"): `voxels/<sha>.ply` -> 64^3 occupancy -> SparseStructureEncoder
  (posterior mean) -> `ss_latents/<model>/<sha>.npz` with `mean` float32 (8, 16, 16, 16), [c, x, y, z].
- `SLatStage` ("slat"): `features/<feat_model>/<sha>.npz` -> SLatEncoder (posterior mean) ->
  `latents/<feat_model>_<model>/<sha>.npz` with `feats` float32 (N, 8) and `coords` uint8 (N, 3), in
  the features' (= voxel ply's) row order. Assets are packed, in arrival order, into sparse batches
  of up to `max_tokens` voxels (`pack_by_tokens`).

Throughput: upstream files are read and decompressed by a loader pool ahead of the model; inputs go
to the device through pinned memory and results come back the same way, with a CUDA event that
a writer pool waits on before it compresses and publishes. The model thread therefore never
blocks on a copy: while the writers publish batch k and the loaders read batch k+2, the device
runs batch k+1.

A non-finite latent is `NonFinite`; a missing upstream file `MissingUpstream`; a model whose config
does not fit the data (input channels, class, resolution, or SLat fed by another feature model)
`ModelConfigMismatch`. All are per asset: one bad asset never fails its batch-mates.

Params `model` (location: local stem, `owner/repo[@revision]/<stem>` on the Hub, or `tiny:<kind>`),
`name` (the variant) and `precision`: the dtype of the encoders' torso, `fp16` (the released
encoders' own, default) | `bf16` | `fp32`, the same arithmetic on every device (catalogs.modelstage).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from catalogs import layout
from catalogs.modelstage import ModelStage
from catalogs.stage import (
    AssetTask, CorruptFile, MissingUpstream, ModelConfigMismatch, NonFinite, Resources, StageContext, StageResult,
)
from encode.npzio import DEFAULT_LEVEL, npz_bytes
from encode.plyio import read_points_ply
from encode.projection import voxel_indices
from trellis_core.locations import TRELLIS

log = logging.getLogger("trellis_data.latents")

TORSO_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


class _EncoderStage(ModelStage):
    models = {"model": TRELLIS}
    precisions = tuple(TORSO_DTYPES)
    expected_class: str = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._loader = self._writer = None  # thread pools, made in setup()

    def load_model(self):
        import torch

        from trellis_core import from_pretrained, load_model_config

        stem = str(self.model_ref().path)
        err = self.check_config(load_model_config(stem))
        if err:
            raise ModelConfigMismatch(f"{self.params.model}: {err}")
        model = from_pretrained(stem, device=self.device)
        model.convert_torso(getattr(torch, TORSO_DTYPES[self.params.precision]))
        return model.eval().requires_grad_(False)

    def check_config(self, cfg: dict[str, Any]) -> str | None:
        name = cfg.get("name")
        aliases = {self.expected_class, "Elastic" + self.expected_class}
        if name not in aliases:
            return f"checkpoint holds a {name!r}, expected {self.expected_class}"
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

    def setup(self) -> None:
        import concurrent.futures as cf

        if self._loader is None:
            cuda = self.device.type == "cuda"
            self._loader = cf.ThreadPoolExecutor(int(self.config.get("loader_threads", 8 if cuda else 2)),
                                                 thread_name_prefix=f"{self.name}-load")
            self._writer = cf.ThreadPoolExecutor(int(self.config.get("writer_threads", 4 if cuda else 1)),
                                                 thread_name_prefix=f"{self.name}-write")
        super().setup()

    def close(self) -> None:
        for pool in (self._loader, self._writer):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._loader = self._writer = None

    def _host(self, shape: tuple, dtype) -> Any:
        """A host tensor the device can copy from and to without synchronising (pinned on CUDA)."""
        import torch

        return torch.empty(shape, dtype=dtype, pin_memory=self.device.type == "cuda")

    def _to_host(self, *tensors) -> tuple[tuple, Any]:
        """Start device -> host copies; returns (host tensors, event the reader waits on)."""
        import torch

        hosts = tuple(self._host(tuple(t.shape), t.dtype) for t in tensors)
        for h, t in zip(hosts, tensors):
            h.copy_(t, non_blocking=True)
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return hosts, event

    def _loads(self, fn, tasks) -> list:
        """fn over tasks on the loader pool (npz decompression releases the GIL), in task order."""
        return [self._loader.submit(fn, t) for t in tasks]

    @staticmethod
    def _collect(out: list, jobs: list, timeout_s: float) -> list:
        """Results of the writer jobs [(indices, future)] into `out`; a failed job fails its assets."""
        for idx, fut in jobs:
            try:
                for i, r in zip(idx, fut.result(timeout=timeout_s)):
                    out[i] = r
            except Exception as exc:
                for i in idx:
                    out[i] = exc
        return out


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
        precision: str = "fp16"
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

        failed = self.failed_setup(tasks)
        if failed:
            return failed
        res = self.params.resolution
        out: list[Any] = [None] * len(tasks)
        loads = self._loads(lambda t: self._occupancy(t, ctx), tasks)
        chunk = int(self.config.get("encode_batch", 16 if self.device.type == "cuda" else 4))
        jobs: list[tuple[list[int], Any]] = []
        part: list[tuple[int, np.ndarray]] = []
        for i, fut in enumerate(loads):
            try:
                part.append((i, fut.result(timeout=self.timeout_s)))
            except Exception as exc:
                out[i] = exc
            if part and (len(part) == chunk or i == len(loads) - 1):
                idx = [j for j, _ in part]
                try:
                    host = self._host((len(part), 1, res, res, res), torch.float32)
                    grid = host.numpy()
                    grid.fill(0.0)
                    for b, (_, vox) in enumerate(part):
                        grid[b, 0, vox[:, 0], vox[:, 1], vox[:, 2]] = 1.0
                    with torch.no_grad():
                        z = self.model(host.to(self.device, non_blocking=True), sample_posterior=False).float()
                    (zh, fh), event = self._to_host(z, torch.isfinite(z.flatten(1)).all(1))
                    jobs.append((idx, self._writer.submit(self._write, [tasks[j] for j in idx],
                                                          [len(v) for _, v in part], zh, fh, event, ctx)))
                except Exception as exc:  # e.g. out of memory: the assets of this chunk fail with it
                    for j in idx:
                        out[j] = exc
                part = []
        return self._collect(out, jobs, self.timeout_s)

    def _write(self, tasks: list[AssetTask], counts: list[int], z, finite, event, ctx: StageContext) -> list:
        if event is not None:
            event.synchronize()
        results: list[Any] = []
        for b, t in enumerate(tasks):
            try:
                if not bool(finite[b]):
                    raise NonFinite(f"{t.sha256[:12]}: SS latent is not finite")
                mean = np.ascontiguousarray(z[b].numpy(), dtype=np.float32)
                rel = layout.ss_latents(self.variant, t.sha256)
                n = self._publish(ctx, rel, mean=mean)
                results.append(StageResult(uri=ctx.store.uri(rel), bytes=n, metrics={
                    "shape": list(mean.shape), "num_voxels": counts[b], "model": self.variant}))
            except Exception as exc:
                results.append(exc)
        return results


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
        precision: str = "fp16"
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
        failed = self.failed_setup(tasks)
        if failed:
            return failed
        out: list[Any] = [None] * len(tasks)
        loads = self._loads(lambda t: self._load(t, ctx), tasks)
        max_tokens = int(self.config.get("max_tokens", 200_000 if self.device.type == "cuda" else 40_000))

        def loaded():
            for i, fut in enumerate(loads):
                try:
                    yield (i, *fut.result(timeout=self.timeout_s))
                except Exception as exc:
                    out[i] = exc

        jobs = []
        for group in pack_by_tokens(loaded(), max_tokens):
            idx = [i for i, _, _ in group]
            try:
                jobs.append((idx, self._encode(group, [tasks[i] for i in idx], ctx)))
            except Exception as exc:  # e.g. out of memory: the assets of this group fail with it
                for i in idx:
                    out[i] = exc
        return self._collect(out, jobs, self.timeout_s)

    def _encode(self, group: list[tuple[int, np.ndarray, np.ndarray]], tasks: list[AssetTask], ctx: StageContext):
        """Queue one sparse batch on the device; returns the writer job that publishes its assets."""
        import torch

        from trellis_core import SparseTensor

        counts = [len(ix) for _, ix, _ in group]
        n, c = sum(counts), group[0][2].shape[1]
        feats = self._host((n, c), torch.float16)
        coords = self._host((n, 4), torch.int32)
        # float16 goes over the bus and is widened to float32 (the reference's input) on the device
        np.concatenate([tk for _, _, tk in group], out=feats.numpy(), casting="same_kind")
        cv = coords.numpy()
        cv[:, 0] = np.repeat(np.arange(len(group), dtype=np.int32), counts)
        np.concatenate([ix for _, ix, _ in group], out=cv[:, 1:])
        starts = np.concatenate([[0], np.cumsum(counts)])
        lay = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        dev = self.device
        x = SparseTensor(feats.to(dev, non_blocking=True).float(), coords.to(dev, non_blocking=True), layout=lay)
        with torch.no_grad():
            z = self.model(x, sample_posterior=False)
        zf = z.feats.float()
        bad = torch.zeros(len(group), dtype=torch.int32, device=dev).index_add_(
            0, x.batch_index, (~torch.isfinite(zf).all(1)).to(torch.int32))
        (zh, bh), event = self._to_host(zf, bad)
        return self._writer.submit(self._write, tasks, [ix for _, ix, _ in group], lay, zh, bh, event, ctx)

    def _write(self, tasks: list[AssetTask], indices: list[np.ndarray], lay: list[slice], z, bad, event,
               ctx: StageContext) -> list:
        if event is not None:
            event.synchronize()
        zf = z.numpy()
        results: list[Any] = []
        for b, t in enumerate(tasks):
            try:
                if int(bad[b]):
                    raise NonFinite(f"{t.sha256[:12]}: SLat latent is not finite")
                rel = layout.latents(self.variant, t.sha256)
                n = self._publish(ctx, rel, feats=np.ascontiguousarray(zf[lay[b]], dtype=np.float32),
                                  coords=indices[b].astype(np.uint8))
                results.append(StageResult(uri=ctx.store.uri(rel), bytes=n, metrics={
                    "num_voxels": int(len(indices[b])), "latent_channels": int(zf.shape[1]), "model": self.variant}))
            except Exception as exc:
                results.append(exc)
        return results


def pack_by_tokens(items, max_tokens: int):
    """Groups of (i, indices, tokens) items in arrival order, each of at most `max_tokens` voxels
    (an item larger than the limit gets a group of its own); a generator, so a group goes to the
    device as soon as it is full while later items are still being read."""
    current: list[tuple] = []
    n = 0
    for item in items:
        if current and n + len(item[1]) > max_tokens:
            yield current
            current, n = [], 0
        current.append(item)
        n += len(item[1])
    if current:
        yield current
