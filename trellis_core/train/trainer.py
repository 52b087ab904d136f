"""Trainer base: AdamW, EMA, mixed precision, gradient clipping, balanced batches, DDP, checkpoints.

Checkpoints use the released layout: ``<out_dir>/ckpts/<name>_step0001000.{json,safetensors}`` and
``<name>_ema0.9999_step0001000.{json,safetensors}`` written by trellis_core's ``save_pretrained``, so
``from_pretrained`` reads them; ``<out_dir>/misc/state_step0001000.pt`` holds the optimizer, EMA,
scaler and sampler position for resuming.

Per-sample randomness (noise, timestep, condition drop) comes from a generator seeded by
``(seed, step, dataset index)``, so a global batch gives the same loss whether it runs in one
process or is split over several ranks.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import save_pretrained
from ..data.sampler import BalancedBatchSampler
from . import dist as D

__all__ = ["TrainConfig", "Trainer", "sample_generator"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    out_dir: str
    batch_size: int = 4                     # per rank
    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)
    grad_clip: Optional[float] = 1.0
    ema_rates: Tuple[float, ...] = (0.9999,)
    precision: str = "auto"                 # auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 | bf16 | fp16
    batch_split: int = 1                    # packs per step (gradient accumulation, voxel-balanced)
    log_every: int = 10
    save_every: int = 0                     # 0: only at the end
    seed: int = 0
    num_workers: int = 0
    mix_weights: Optional[Dict[str, float]] = None
    balance: bool = True
    p_uncond: float = 0.1                   # condition drop for classifier-free guidance
    sigma_min: float = 1e-5
    t_mean: float = 1.0                     # logit-normal timestep schedule
    t_std: float = 1.0


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((((seed * 1_000_003) + step) * 1_000_003 + int(index)) % (2 ** 63 - 1))
    return g


def _autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class Trainer:
    """Subclasses set ``collate`` and implement ``training_losses(batch, step) -> (loss, terms)``."""

    trainable: Tuple[str, ...] = ()

    def __init__(self, models: Mapping[str, nn.Module], dataset, config: TrainConfig,
                 device: Optional[torch.device] = None):
        self.cfg = config
        self.dataset = dataset
        self.device = torch.device(device) if device is not None else D.default_device()
        self.world, self.rank = D.world(), D.rank()
        self.models = {k: m.to(self.device) for k, m in models.items()}
        names = self.trainable or tuple(self.models)
        self.train_names = [n for n in names if n in self.models]
        self.wrapped: Dict[str, nn.Module] = {}
        for n in self.models:
            m = self.models[n]
            if n in self.train_names:
                m.train()
                if self.world > 1:
                    from torch.nn.parallel import DistributedDataParallel as DDP
                    kw = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
                    m = DDP(m, **kw)
            else:
                m.eval().requires_grad_(False)
            self.wrapped[n] = m
        self.params = [p for n in self.train_names for p in self.models[n].parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, betas=tuple(config.betas),
                                           weight_decay=config.weight_decay)
        self.amp_dtype = _autocast_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = {r: [p.detach().float().clone() for p in self.params] for r in config.ema_rates}
        manifest = getattr(dataset, "manifest", None)
        self.sampler = BalancedBatchSampler(
            dataset.loads if hasattr(dataset, "loads") else [1] * len(dataset), config.batch_size, self.world,
            self.rank, seed=config.seed, groups=manifest.groups if manifest is not None else None,
            weights=config.mix_weights, balance=config.balance)
        self.step = 0
        self.history: List[Dict[str, float]] = []

    # ------------------------------------------------------------------ data
    def collate(self, batch):  # pragma: no cover - set by subclasses
        raise NotImplementedError

    def split(self, batch) -> List[Any]:
        return [batch]

    def batches(self) -> Iterator[Any]:
        """Endless stream of this rank's batches; resumes at the sampler's (epoch, position)."""
        while True:
            epoch, pos = self.sampler.epoch, self.sampler.position
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=self._collate_raw,
                                num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda")
            self.sampler.load_state_dict({"epoch": epoch, "position": pos, "seed": self.sampler.seed})
            consumed = pos
            for raw in loader:
                consumed += 1
                self._position = {"epoch": epoch, "position": consumed, "seed": self.sampler.seed}
                yield raw
            self.sampler.set_epoch(epoch + 1)

    def _collate_raw(self, samples):
        return samples  # collation happens in the main process so ``split`` can balance packs

    # ------------------------------------------------------------------ helpers for subclasses
    def gens(self, indices: Sequence[int]) -> List[torch.Generator]:
        return [sample_generator(self.cfg.seed, self.step, i) for i in indices]

    def logit_normal_t(self, g: torch.Generator) -> float:
        return float(torch.sigmoid(torch.randn(1, generator=g) * self.cfg.t_std + self.cfg.t_mean))

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ------------------------------------------------------------------ step
    def training_losses(self, batch, step: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def train_step(self, raw) -> Dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        packs = self.split(raw)
        terms_sum: Dict[str, float] = {}
        for k, pack in enumerate(packs):
            sync = k == len(packs) - 1
            ctx = contextlib.ExitStack()
            if not sync and self.world > 1:
                for n in self.train_names:
                    ctx.enter_context(self.wrapped[n].no_sync())
            with ctx:
                with self.autocast():
                    loss, terms = self.training_losses(pack, self.step)
                self.scaler.scale(loss).backward()
            for t, v in terms.items():
                terms_sum[t] = terms_sum.get(t, 0.0) + float(v)
        self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip:
            gn = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            terms_sum["grad_norm"] = float(gn)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self._update_ema()
        # loss terms are per-rank shares of the global mean: the sum over ranks is the global value
        keys = sorted(k for k in terms_sum if k != "grad_norm")
        if keys:
            vec = D.all_reduce_sum(torch.tensor([terms_sum[k] for k in keys], dtype=torch.float64))
            terms_sum.update({k: float(v) for k, v in zip(keys, vec)})
        return terms_sum

    @torch.no_grad()
    def _update_ema(self):
        for rate, shadow in self.ema.items():
            for s, p in zip(shadow, self.params):
                s.mul_(rate).add_(p.detach().float(), alpha=1 - rate)

    def train(self, max_steps: Optional[int] = None) -> List[Dict[str, float]]:
        max_steps = max_steps or self.cfg.max_steps
        it = self.batches()
        t0 = time.time()
        while self.step < max_steps:
            raw = next(it)
            terms = self.train_step(raw)
            self.step += 1
            terms["step"] = self.step
            self.history.append(terms)
            if D.is_main() and self.cfg.log_every and self.step % self.cfg.log_every == 0:
                log.info("step %d %s (%.2f s/step)", self.step,
                         " ".join(f"{k}={v:.4g}" for k, v in terms.items() if k != "step"),
                         (time.time() - t0) / self.step)
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save()
        if not self.cfg.save_every or self.step % self.cfg.save_every:
            self.save()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def ckpt_stem(self, name: str, step: Optional[int] = None, ema: Optional[float] = None) -> str:
        step = self.step if step is None else step
        tag = f"_ema{ema}" if ema is not None else ""
        return os.path.join(self.cfg.out_dir, "ckpts", f"{name}{tag}_step{step:07d}")

    def save(self) -> Dict[str, str]:
        """Write every trainable model and its EMA copies (rank 0 only); returns the stems."""
        out = {}
        if D.is_main():
            for n in self.train_names:
                m = self.models[n]
                out[n] = self.ckpt_stem(n)
                save_pretrained(m, out[n])
                for rate in self.ema:
                    out[f"{n}_ema{rate}"] = self.ckpt_stem(n, ema=rate)
                    save_pretrained(_StateShim(m, self._ema_state(n, rate)), out[f"{n}_ema{rate}"])
            os.makedirs(os.path.join(self.cfg.out_dir, "misc"), exist_ok=True)
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                     "ema": {str(r): [s.cpu() for s in v] for r, v in self.ema.items()},
                     "sampler": getattr(self, "_position", self.sampler.state_dict()),
                     "config": asdict(self.cfg)}
            path = os.path.join(self.cfg.out_dir, "misc", f"state_step{self.step:07d}.pt")
            torch.save(state, path + ".tmp")
            os.replace(path + ".tmp", path)
        if self.world > 1:
            torch.distributed.barrier()
        return out

    def _ema_state(self, name: str, rate: float) -> Dict[str, torch.Tensor]:
        m = self.models[name]
        state = {k: v.detach().cpu() for k, v in m.state_dict().items()}
        lookup = {id(p): i for i, p in enumerate(self.params)}
        for k, p in m.named_parameters():
            if id(p) in lookup:
                state[k] = self.ema[rate][lookup[id(p)]].to(p.dtype).cpu()
        return state

    def load(self, step: Optional[int] = None) -> int:
        """Resume from ``misc/state_step*.pt`` (latest when ``step`` is None) and the model files."""
        from safetensors.torch import load_file

        files = sorted(glob.glob(os.path.join(self.cfg.out_dir, "misc", "state_step*.pt")))
        if step is not None:
            files = [f for f in files if f.endswith(f"state_step{step:07d}.pt")]
        if not files:
            raise FileNotFoundError(f"no training state in {self.cfg.out_dir}/misc")
        state = torch.load(files[-1], map_location="cpu", weights_only=False)
        self.step = int(state["step"])
        for n in self.train_names:
            self.models[n].load_state_dict(load_file(self.ckpt_stem(n) + ".safetensors"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for r, v in state["ema"].items():
            self.ema[float(r)] = [s.to(self.device) for s in v]
        self.sampler.load_state_dict(state["sampler"])
        return self.step


class _StateShim:
    """Lets ``save_pretrained`` write an EMA state dict under the model's class name and config."""

    def __init__(self, model: nn.Module, state: Dict[str, torch.Tensor]):
        self.__class__ = type(type(model).__name__, (_StateShim,), {})
        self.config, self._state = getattr(model, "config", {}), state

    def state_dict(self):
        return self._state
