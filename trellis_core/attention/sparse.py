"""Attention over sparse tensors: per-instance full attention, shifted-window ("swin")
attention, and cross-attention to dense per-instance context (MODELS.md 2.4)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..sparse.tensor import SparseTensor
from .functional import varlen_attention

__all__ = ["sparse_self_attention", "sparse_cross_attention", "swin_partition"]


def swin_partition(x: SparseTensor, window_size: int, shift: int) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """Window id per voxel = (b, floor((xyz + shift) / w)); returns (fwd perm, inverse perm, lens).

    Cached on the tensor, so consecutive blocks with the same shift reuse it."""
    key = f"swin_{window_size}_{shift}"
    hit = x.cache.get(key)
    if hit is not None and hit[0].device == x.feats.device:
        return hit
    c = x.coords.long()
    w = torch.div(c[:, 1:] + shift, window_size, rounding_mode="floor")
    # window grid extents (+1 for safety) make a collision-free code
    ext = int(w.max().item()) + 1
    code = ((c[:, 0] * ext + w[:, 0]) * ext + w[:, 1]) * ext + w[:, 2]
    sorted_code, fwd = torch.sort(code, stable=True)
    _, counts = torch.unique_consecutive(sorted_code, return_counts=True)
    inv = torch.empty_like(fwd)
    inv[fwd] = torch.arange(fwd.shape[0], device=fwd.device)
    entry = (fwd, inv, counts.tolist())
    x.cache[key] = entry
    return entry


def sparse_self_attention(
    x: SparseTensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    mode: str = "full", window_size: Optional[int] = None, shift: int = 0,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``q, k, v`` are ``[N, H, d]`` rows of ``x``; returns ``[N, H, d]`` in the same row order."""
    if mode == "full":
        lens = x.batch_lengths()
        return varlen_attention(q, k, v, lens, lens, backend)
    if mode in ("swin", "windowed"):
        fwd, inv, lens = swin_partition(x, window_size, shift)
        out = varlen_attention(q[fwd], k[fwd], v[fwd], lens, lens, backend)
        return out[inv]
    raise NotImplementedError(f"sparse attention mode {mode!r} (serialized modes are not used by released models)")


def sparse_cross_attention(
    x: SparseTensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``q [N, H, d]`` rows of ``x``; ``k, v [B, L, H, d]`` dense context per instance."""
    B, L = k.shape[:2]
    lens = x.batch_lengths()
    if B != len(lens):
        raise ValueError(f"context batch {B} != sparse batch {len(lens)}")
    return varlen_attention(q, k.reshape(B * L, *k.shape[2:]), v.reshape(B * L, *v.shape[2:]),
                            lens, [L] * B, backend)
