"""Normalisation layers (MODELS.md 2.1). All compute in float32 and return the input dtype."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse.tensor import SparseTensor

__all__ = ["LayerNorm32", "ChannelLayerNorm32", "GroupNorm32", "SparseGroupNorm32", "MultiHeadRMSNorm"]


class LayerNorm32(nn.LayerNorm):
    def forward(self, x):
        if isinstance(x, SparseTensor):
            return x.replace(self.forward(x.feats))
        return super().forward(x.float()).type(x.dtype)


class ChannelLayerNorm32(LayerNorm32):
    """LayerNorm over the channel dim of a dense ``(B, C, ...)`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.dim()
        x = x.permute(0, *range(2, d), 1).contiguous()
        x = super().forward(x)
        return x.permute(0, d - 1, *range(1, d - 1)).contiguous()


class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


class SparseGroupNorm32(nn.GroupNorm):
    """GroupNorm over all voxels of each batch instance separately."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        feats = x.feats.float()
        out = torch.empty_like(feats)
        for s in x.layout:
            f = feats[s].t().unsqueeze(0)  # (1, C, N_b)
            out[s] = F.group_norm(f, self.num_groups, self.weight, self.bias, self.eps)[0].t()
        return x.replace(out.type(x.dtype))


class MultiHeadRMSNorm(nn.Module):
    """Per head: ``normalize(x) * gamma[h] * sqrt(d)`` over the last dim of ``(..., H, d)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.scale = math.sqrt(dim)
        self.gamma = nn.Parameter(torch.ones(heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.normalize(x.float(), dim=-1) * self.gamma * self.scale).to(x.dtype)
