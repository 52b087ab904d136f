"""The one place that chooses an attention kernel.

Backends:
* ``sdpa`` (default): PyTorch ``scaled_dot_product_attention``. Variable-length (block-diagonal)
  attention is done by one of these strategies, chosen by ``TRELLIS_SDPA_VARLEN``:
  ``auto`` (default: on CUDA ``varlen`` when available, else ``nested``; ``bucket`` on CPU), ``varlen``
  (``torch.nn.attention.varlen.varlen_attn``, CUDA), ``nested`` (jagged nested tensors, CUDA),
  ``bucket`` (sequences grouped by length, one batched SDPA call per distinct length; exact on
  any device) and ``pad`` (pad to the longest sequence with a boolean mask).
* ``xformers``: ``xformers.ops.memory_efficient_attention`` (+ ``BlockDiagonalMask``), CUDA.
* ``flash_attn``: ``flash_attn_func`` / ``flash_attn_varlen_func``, CUDA, fp16/bf16.
* ``naive``: explicit softmax(QK^T)V per sequence in the input dtype (a slow reference).

Selection order: the ``backend=`` argument of the call, then :func:`set_attention_backend`
(or the :func:`attention_backend` context manager), then ``TRELLIS_ATTN_BACKEND``, then ``sdpa``.
A CUDA-only backend asked for on CPU tensors falls back to ``sdpa``.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from typing import List, Optional

import torch

BACKENDS = ("sdpa", "xformers", "flash_attn", "naive")
SDPA_VARLEN_MODES = ("auto", "varlen", "nested", "bucket", "pad")
_override: Optional[str] = None
_available_cache = {}


def _importable(mod: str) -> bool:
    if mod not in _available_cache:
        try:
            importlib.import_module(mod)
            _available_cache[mod] = True
        except Exception:
            _available_cache[mod] = False
    return _available_cache[mod]


def available_backends(device: Optional[torch.device] = None) -> List[str]:
    """Backends usable for tensors on ``device`` (default: CUDA if present, else CPU)."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = ["sdpa", "naive"]
    if torch.device(device).type == "cuda":
        if _importable("xformers.ops"):
            out.append("xformers")
        if _importable("flash_attn"):
            out.append("flash_attn")
    return out


def set_attention_backend(name: Optional[str]) -> None:
    global _override
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {BACKENDS}")
    _override = name


@contextlib.contextmanager
def attention_backend(name: Optional[str]):
    global _override
    old = _override
    set_attention_backend(name)
    try:
        yield
    finally:
        _override = old


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    name = backend or _override or os.environ.get("TRELLIS_ATTN_BACKEND") or "sdpa"
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {BACKENDS}")
    if name in ("xformers", "flash_attn"):
        if device.type != "cuda":
            return "sdpa"
        mod = "xformers.ops" if name == "xformers" else "flash_attn"
        if not _importable(mod):
            raise RuntimeError(f"attention backend {name!r} requested but {mod} cannot be imported")
    return name


def sdpa_varlen_mode(device: torch.device, mode: Optional[str] = None) -> str:
    mode = mode or os.environ.get("TRELLIS_SDPA_VARLEN", "auto")
    if mode not in SDPA_VARLEN_MODES:
        raise ValueError(f"TRELLIS_SDPA_VARLEN must be one of {SDPA_VARLEN_MODES}, got {mode!r}")
    if mode == "auto":
        # measured on H100 (bench/results/trellis_core_gpu.json): varlen << nested < pad << bucket
        if device.type == "cuda":
            return "varlen" if torch_varlen_available() else "nested"
        return "bucket"
    if mode in ("varlen", "nested") and device.type != "cuda":
        return "bucket"
    return mode


def torch_varlen_available() -> bool:
    return _importable("torch.nn.attention.varlen")
