"""Attention over sparse tensors: per-instance full attention, shifted-window ("swin")
attention, and cross-attention to dense per-instance context (MODELS.md 2.4)."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from ..sparse.tensor import SparseTensor
from .functional import cumulative_lengths, varlen_attention

__all__ = ["sparse_self_attention", "sparse_cross_attention", "swin_partition"]


def swin_partition(x: SparseTensor, window_size: int, shift: int) -> Tuple[torch.Tensor, torch.Tensor, List[int], torch.Tensor]:
    """Window id per voxel = (b, floor((xyz + shift) / w)); returns (fwd perm, inverse perm, lens,
    cumulative lens as int32 on the device).

    Cached on the tensor, so consecutive blocks with the same shift reuse it. Window ids are packed
    16 bits per axis (coordinates below 65536 * window_size, batch below 32768), so building the
    code needs no look at the data; the lengths are read back once (one synchronisation)."""
    key = f"swin_{window_size}_{shift}"
    hit = x.cache.get(key)
    if hit is not None and hit[0].device == x.feats.device:
        return hit
    c = x.coords.long()
    w = torch.div(c[:, 1:] + shift, window_size, rounding_mode="floor")
    code = (((c[:, 0] << 16 | w[:, 0]) << 16 | w[:, 1]) << 16) | w[:, 2]
    sorted_code, fwd = torch.sort(code, stable=True)
    _, counts = torch.unique_consecutive(sorted_code, return_counts=True)
    inv = torch.empty_like(fwd)
    inv[fwd] = torch.arange(fwd.shape[0], device=fwd.device)
    cu = torch.nn.functional.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
    entry = (fwd, inv, counts.tolist(), cu)
    x.cache[key] = entry
    return entry


def _full_cu(x: SparseTensor) -> torch.Tensor:
    """Cumulative instance lengths of ``x`` on its device (cached with the layout)."""
    cu = x.cache.get("_cu_full")
    if cu is None or cu.device != x.feats.device:
        cu = cumulative_lengths(x.batch_lengths(), x.feats.device)
        x.cache["_cu_full"] = cu
    return cu


def sparse_self_attention(
    x: SparseTensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    mode: str = "full", window_size: Optional[int] = None, shift: int = 0,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``q, k, v`` are ``[N, H, d]`` rows of ``x``; returns ``[N, H, d]`` in the same row order."""
    if mode == "full":
        lens, cu = x.batch_lengths(), _full_cu(x)
        return varlen_attention(q, k, v, lens, lens, backend, cu_seqlens=(cu, cu))
    if mode in ("swin", "windowed"):
        fwd, inv, lens, cu = swin_partition(x, window_size, shift)
        out = varlen_attention(q[fwd], k[fwd], v[fwd], lens, lens, backend, cu_seqlens=(cu, cu))
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
