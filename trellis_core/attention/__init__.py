"""Attention kernels behind one function each: :func:`dense_attention` and the sparse ones."""
from .backends import (BACKENDS, attention_backend, available_backends, resolve_backend,
                       set_attention_backend)
from .functional import dense_attention, varlen_attention
from .sparse import sparse_cross_attention, sparse_self_attention, swin_partition

__all__ = [
    "BACKENDS", "attention_backend", "available_backends", "resolve_backend", "set_attention_backend",
    "dense_attention", "varlen_attention", "sparse_self_attention", "sparse_cross_attention",
    "swin_partition",
]
