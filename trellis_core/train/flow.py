"""Rectified-flow trainers for the sparse-structure and SLat denoisers (MODELS.md 7).

``x_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) eps``, target ``v = (1 - sigma_min) eps - x0``; the
model gets ``1000 t``; t ~ logit-normal(1, 1) as in the released configs. With a condition encoder,
the condition of each sample is replaced by the negative one with probability ``p_uncond`` (for
classifier-free guidance): zeros for DINOv2 images, the empty prompt for CLIP text.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..data.collate import collate_dense, collate_sparse, split_balanced
from ..sparse.tensor import SparseTensor
from . import dist as D
from .trainer import Trainer

__all__ = ["SSFlowTrainer", "SLatFlowTrainer", "flow_pair"]


def flow_pair(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, sigma_min: float):
    """``(x_t, target)`` for per-row ``t`` broadcast over the trailing axes."""
    while t.dim() < x0.dim():
        t = t[..., None]
    x_t = (1 - t) * x0 + (sigma_min + (1 - sigma_min) * t) * eps
    return x_t, (1 - sigma_min) * eps - x0


class _CondMixin:
    cond_model = None

    def encode_cond(self, batch: Dict[str, Any], gens: Sequence[torch.Generator]) -> Optional[torch.Tensor]:
        if self.cond_model is None:
            return None
        raw = batch["cond"]
        with torch.no_grad():
            if isinstance(raw, torch.Tensor):
                cond = self.cond_model(raw.to(self.device))
            else:
                cond = self.cond_model(list(raw))
            neg = self.cond_model.negative(cond)
        drop = torch.tensor([float(torch.rand(1, generator=g)) < self.cfg.p_uncond for g in gens],
                            device=cond.device)
        return torch.where(drop[:, None, None], neg.expand_as(cond), cond)


class SSFlowTrainer(_CondMixin, Trainer):
    """Dense 16³ latent flow. Batch: ``x_0`` (B, 8, 16, 16, 16) [+ ``cond``]."""

    trainable = ("denoiser",)

    def __init__(self, denoiser, dataset, config, cond_model=None, device=None):
        super().__init__({"denoiser": denoiser}, dataset, config, device)
        self.cond_model = cond_model.to(self.device).eval() if cond_model is not None else None

    def collate(self, samples):
        return collate_dense(samples)

    def split(self, raw):
        k = max(1, min(self.cfg.batch_split, len(raw)))
        n = len(raw)
        return [(self.collate(raw[i * n // k:(i + 1) * n // k]), n) for i in range(k)]

    def training_losses(self, pack, step):
        batch, n_rank = pack
        x0 = batch["x_0"].to(self.device)
        gens = self.gens(batch["index"])
        eps = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens]).to(self.device)
        t = torch.tensor([self.logit_normal_t(g) for g in gens], device=self.device)
        x_t, target = flow_pair(x0, eps, t, self.cfg.sigma_min)
        cond = self.encode_cond(batch, gens)
        pred = self.wrapped["denoiser"](x_t, t * 1000, cond)
        per_sample = ((pred.float() - target) ** 2).flatten(1).mean(1)
        # share of the global mean: rank sums add up to mean over the global batch
        loss = per_sample.sum() / (n_rank * self.world)
        return loss * self.world, {"loss": float(loss.detach())}


class SLatFlowTrainer(_CondMixin, Trainer):
    """Sparse SLat flow. Batch samples: ``coords`` (N, 3), ``feats`` (N, 8) [+ ``cond``].

    The loss is the voxel-weighted MSE over the whole global batch (every voxel counts the same,
    whichever rank or pack it lands in)."""

    trainable = ("denoiser",)

    def __init__(self, denoiser, dataset, config, cond_model=None, device=None):
        super().__init__({"denoiser": denoiser}, dataset, config, device)
        self.cond_model = cond_model.to(self.device).eval() if cond_model is not None else None

    def collate(self, samples):
        return collate_sparse(samples, key="x_0")

    def split(self, raw):
        n_vox = sum(len(s["coords"]) for s in raw)
        total = float(D.all_reduce_sum(torch.tensor([n_vox], dtype=torch.float64))[0])
        if self.cfg.batch_split > 1:
            return [(p, total) for p in split_balanced(raw, self.cfg.batch_split, key="x_0")]
        return [(self.collate(raw), total)]

    def training_losses(self, pack, step):
        batch, total_vox = pack
        x0: SparseTensor = batch["x_0"].to(self.device)
        gens = self.gens(batch["index"])
        lens = x0.batch_lengths()
        C = x0.feats.shape[1]
        eps = torch.cat([torch.randn(n, C, generator=g) for n, g in zip(lens, gens)]).to(self.device)
        t = torch.tensor([self.logit_normal_t(g) for g in gens], device=self.device)
        x_t, target = flow_pair(x0.feats, eps, t[x0.batch_index], self.cfg.sigma_min)
        cond = self.encode_cond(batch, gens)
        pred = self.wrapped["denoiser"](x0.replace(x_t), t * 1000, cond)
        sq = ((pred.feats.float() - target) ** 2).sum()
        share = sq / (total_vox * C)
        return share * self.world, {"loss": float(share.detach())}
