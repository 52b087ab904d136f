"""Small building blocks: sparse linear, feed-forward nets, position and timestep embeddings,
and the fp16 conversion of a model's torso (MODELS.md 2.2, 2.3, 2.5, 2.6, 2.13)."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..sparse.conv import SparseConv3d
from ..sparse.tensor import SparseTensor

__all__ = ["SparseLinear", "FeedForwardNet", "SparseFeedForwardNet", "SparseSiLU",
           "AbsolutePositionEmbedder", "TimestepEmbedder", "TORSO_LAYER_TYPES", "convert_torso",
           "hammersley_offsets"]


class SparseLinear(nn.Linear):
    """``nn.Linear`` that also maps the features of a :class:`SparseTensor`."""

    def forward(self, x):
        if isinstance(x, SparseTensor):
            return x.replace(super().forward(x.feats))
        return super().forward(x)


class SparseSiLU(nn.SiLU):
    def forward(self, x):
        if isinstance(x, SparseTensor):
            return x.replace(F.silu(x.feats))
        return super().forward(x)


class GELUTanh(nn.GELU):
    def __init__(self):
        super().__init__(approximate="tanh")


class FeedForwardNet(nn.Module):
    """``Linear(C, rC) -> GELU(tanh) -> Linear(rC, C)``; keys ``mlp.0``, ``mlp.2``."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), GELUTanh(), nn.Linear(hidden, channels))

    def forward(self, x):
        return self.mlp(x)


class SparseFeedForwardNet(FeedForwardNet):
    def forward(self, x):
        if isinstance(x, SparseTensor):
            return x.replace(self.mlp(x.feats))
        return self.mlp(x)


class AbsolutePositionEmbedder(nn.Module):
    """3-D sin-cos embedding: per axis ``[sin(p w_k), cos(p w_k)]``, ``w_k = 1/10000^(k/f)``,
    ``f = C // 3 // 2``, zero padded to ``C``. No parameters."""

    def __init__(self, channels: int, in_channels: int = 3):
        super().__init__()
        self.channels, self.in_channels = channels, in_channels
        self.freq_dim = channels // in_channels // 2

    def _freqs(self, device):
        f = torch.arange(self.freq_dim, dtype=torch.float32, device=device) / self.freq_dim
        return 1.0 / (10000 ** f)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        n, d = pos.shape
        flat = pos.reshape(-1).float()
        ang = torch.outer(flat, self._freqs(pos.device))
        emb = torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).reshape(n, -1)
        if emb.shape[1] < self.channels:
            emb = torch.cat([emb, emb.new_zeros(n, self.channels - emb.shape[1])], dim=-1)
        return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal (cos first, 256 channels) -> ``Linear -> SiLU -> Linear``; keys ``mlp.0``, ``mlp.2``."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size, bias=True), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size, bias=True))

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


# Primitive layers whose parameters the fp16 torso conversion touches (norms never are).
TORSO_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                     nn.ConvTranspose3d, nn.Linear, SparseConv3d)


def convert_torso(modules: Iterable[nn.Module], dtype: torch.dtype) -> None:
    """Cast the parameters of linear/conv layers inside ``modules`` to ``dtype`` in place."""
    for root in modules:
        for m in root.modules():
            if isinstance(m, TORSO_LAYER_TYPES):
                for p in m.parameters():
                    p.data = p.data.to(dtype)


def _radical_inverse(n: int, base: int) -> float:
    inv, f = 0.0, 1.0 / base
    while n > 0:
        inv += (n % base) * f
        n //= base
        f /= base
    return inv


def hammersley_offsets(num: int, voxel_size: float) -> torch.Tensor:
    """``atanh((2u - 1) / voxel_size)`` of the Hammersley points ``(n/num, phi_2(n), phi_3(n))``."""
    pts = np.array([[n / num, _radical_inverse(n, 2), _radical_inverse(n, 3)] for n in range(num)])
    return torch.tensor(np.arctanh((pts * 2 - 1) / voxel_size), dtype=torch.float32)
