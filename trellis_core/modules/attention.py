"""Multi-head attention modules, dense and sparse (MODELS.md 2.4)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..attention import dense_attention, sparse_cross_attention, sparse_self_attention
from ..sparse.tensor import SparseTensor
from .norm import MultiHeadRMSNorm

__all__ = ["MultiHeadAttention", "SparseMultiHeadAttention"]


class _AttentionBase(nn.Module):
    def __init__(self, channels: int, num_heads: int, ctx_channels: Optional[int] = None, type: str = "self",
                 qkv_bias: bool = True, use_rms_norm: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError("channels must be divisible by num_heads")
        if type not in ("self", "cross"):
            raise ValueError(f"unknown attention type {type!r}")
        self.channels, self.num_heads, self.type = channels, num_heads, type
        self.head_dim = channels // num_heads
        self.ctx_channels = ctx_channels if ctx_channels is not None else channels
        self.use_rms_norm = use_rms_norm
        if type == "self":
            self.to_qkv = nn.Linear(channels, channels * 3, bias=qkv_bias)
        else:
            self.to_q = nn.Linear(channels, channels, bias=qkv_bias)
            self.to_kv = nn.Linear(self.ctx_channels, channels * 2, bias=qkv_bias)
        if use_rms_norm:
            self.q_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
            self.k_rms_norm = MultiHeadRMSNorm(self.head_dim, num_heads)
        self.to_out = nn.Linear(channels, channels)

    def _qk_norm(self, q, k):
        if self.use_rms_norm:
            q, k = self.q_rms_norm(q), self.k_rms_norm(k)
        return q, k


class MultiHeadAttention(_AttentionBase):
    """Dense attention over token sequences ``(B, L, C)``; full attention only."""

    def __init__(self, channels, num_heads, ctx_channels=None, type="self", attn_mode="full",
                 qkv_bias=True, use_rms_norm=False):
        if attn_mode != "full":
            raise NotImplementedError("dense attention supports attn_mode='full' only")
        super().__init__(channels, num_heads, ctx_channels, type, qkv_bias, use_rms_norm)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, backend: Optional[str] = None):
        B, L, C = x.shape
        H, d = self.num_heads, self.head_dim
        if self.type == "self":
            q, k, v = self.to_qkv(x).reshape(B, L, 3, H, d).unbind(dim=2)
        else:
            q = self.to_q(x).reshape(B, L, H, d)
            k, v = self.to_kv(context).reshape(B, context.shape[1], 2, H, d).unbind(dim=2)
        q, k = self._qk_norm(q, k)
        h = dense_attention(q, k, v, backend)
        return self.to_out(h.reshape(B, L, C))


class SparseMultiHeadAttention(_AttentionBase):
    """Attention over the voxels of a :class:`SparseTensor`.

    Self-attention modes: ``full`` (per instance) and ``swin`` (windows of ``window_size`` with
    ``shift_window`` offset). Cross-attention attends to the instance's dense context tokens."""

    def __init__(self, channels, num_heads, ctx_channels=None, type="self", attn_mode="full",
                 window_size: Optional[int] = None, shift_window: int = 0, qkv_bias=True,
                 use_rms_norm=False):
        super().__init__(channels, num_heads, ctx_channels, type, qkv_bias, use_rms_norm)
        if type == "cross" and attn_mode != "full":
            raise ValueError("cross-attention is always full attention")
        if attn_mode not in ("full", "swin", "windowed"):
            raise NotImplementedError(f"attn_mode {attn_mode!r} is not supported (not used by released models)")
        self.attn_mode, self.window_size, self.shift_window = attn_mode, window_size, shift_window

    def forward(self, x: SparseTensor, context: Optional[torch.Tensor] = None, backend: Optional[str] = None):
        H, d = self.num_heads, self.head_dim
        n = x.feats.shape[0]
        if self.type == "self":
            q, k, v = self.to_qkv(x.feats).reshape(n, 3, H, d).unbind(dim=1)
            q, k = self._qk_norm(q, k)
            h = sparse_self_attention(x, q, k, v, self.attn_mode, self.window_size, self.shift_window, backend)
        else:
            q = self.to_q(x.feats).reshape(n, H, d)
            B, L = context.shape[:2]
            k, v = self.to_kv(context).reshape(B, L, 2, H, d).unbind(dim=2)
            q, k = self._qk_norm(q, k)
            h = sparse_cross_attention(x, q, k, v, backend)
        return x.replace(self.to_out(h.reshape(n, self.channels)))
