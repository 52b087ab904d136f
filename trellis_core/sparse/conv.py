"""Submanifold sparse convolution (MODELS.md 2.10) with two interchangeable backends.

* ``torch``: plain PyTorch, any device. Neighbours are found by hashing coordinates into int64
  keys, sorting them once and ``searchsorted``-ing the shifted queries; the resulting
  (output row, input row) pairs per kernel offset are cached on the tensor and reused by every
  conv at the same coordinates. Each offset is a gather -> matmul -> ``index_add_``.
* ``spconv``: ``spconv.pytorch.SubMConv3d`` sharing our parameters; used on CUDA when spconv is
  importable (never on CPU: its CPU build is not trustworthy, see the vectors' README).

The weight layout is spconv's ``[C_out, kx, ky, kz, C_in]`` (cross-correlation, no kernel flip).
Kernel size 1 reproduces spconv's 1x1 shortcut, which reads the weight memory as
``[C_in, C_out]``: ``out = feats @ W.reshape(C_in, C_out) + bias`` (spconv issue #450); the
released mesh decoder was trained with it.

Backend choice lives here only: :func:`get_sparse_conv_backend` (``TRELLIS_SPCONV_BACKEND`` =
``auto`` | ``torch`` | ``spconv``, or :func:`set_sparse_conv_backend`). ``TRELLIS_SPCONV_ALGO``
(``native`` | ``mask_implicit_gemm`` | ``mask_split_implicit_gemm``) picks spconv's algorithm (default: spconv's
own). Under ``auto``, a spconv failure (e.g. no prebuilt kernel for this GPU/dtype) is reported
once as a warning and that call, and later ones of the same dtype, use the torch path.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import List, Optional, Tuple

import torch
from torch import nn

from .tensor import SparseTensor

__all__ = ["SparseConv3d", "SubMConv3dParams", "get_sparse_conv_backend", "set_sparse_conv_backend",
           "spconv_available", "submanifold_neighbours", "subm_conv3d_torch"]

_BACKEND_OVERRIDE: Optional[str] = None
_SPCONV_FAILED = set()  # (dtype, training) combos where spconv raised under "auto"
_SPCONV = None  # module, False when unavailable


def spconv_available() -> bool:
    global _SPCONV
    if _SPCONV is None:
        try:
            import spconv.pytorch as sp  # noqa: F401
            _SPCONV = sp
        except Exception:  # ImportError, or a CUDA-library load failure
            _SPCONV = False
    return _SPCONV is not False


def set_sparse_conv_backend(name: Optional[str]) -> None:
    """Force ``"torch"`` or ``"spconv"`` (``None`` or ``"auto"`` restores automatic choice)."""
    global _BACKEND_OVERRIDE
    if name not in (None, "auto", "torch", "spconv"):
        raise ValueError(f"unknown sparse conv backend {name!r}")
    _BACKEND_OVERRIDE = None if name == "auto" else name


def get_sparse_conv_backend(device: torch.device) -> str:
    name = _BACKEND_OVERRIDE or os.environ.get("TRELLIS_SPCONV_BACKEND", "auto")
    if name == "auto":
        return "spconv" if (device.type == "cuda" and spconv_available()) else "torch"
    if name == "spconv":
        if not spconv_available():
            raise RuntimeError("TRELLIS_SPCONV_BACKEND=spconv but spconv cannot be imported")
        if device.type != "cuda":
            raise RuntimeError("the spconv backend is only used on CUDA tensors "
                               "(spconv's CPU build gives wrong results)")
    elif name != "torch":
        raise ValueError(f"unknown sparse conv backend {name!r}")
    return name


# ---------------------------------------------------------------------------- torch path
def submanifold_neighbours(coords: torch.Tensor, kernel_size: int) -> List[Tuple[int, torch.Tensor, torch.Tensor]]:
    """For each kernel offset: ``(flat kernel index, out_rows, in_rows)`` of active pairs.

    ``coords`` int [N, 4]; neighbours never cross batch instances. The centre offset is
    returned with ``out_rows = in_rows = None`` (identity)."""
    r = kernel_size // 2
    c = coords.long()
    xyz = c[:, 1:] + r  # shift so that every query is >= 0
    size = int(xyz.max().item()) + r + 1 if c.shape[0] else 1
    b = c[:, 0]

    def encode(p):
        return ((b * size + p[:, 0]) * size + p[:, 1]) * size + p[:, 2]

    keys = encode(xyz)
    sorted_keys, perm = torch.sort(keys)
    out = []
    rng = range(kernel_size)
    for a in rng:
        for bb in rng:
            for cc in rng:
                kidx = (a * kernel_size + bb) * kernel_size + cc
                off = (a - r, bb - r, cc - r)
                if off == (0, 0, 0):
                    out.append((kidx, None, None))
                    continue
                q = encode(xyz + torch.tensor(off, device=c.device))
                pos = torch.searchsorted(sorted_keys, q).clamp_(max=max(len(sorted_keys) - 1, 0))
                found = sorted_keys[pos] == q
                out_rows = found.nonzero(as_tuple=True)[0]
                if out_rows.numel() == 0:
                    continue
                in_rows = perm[pos[out_rows]]
                out.append((kidx, out_rows, in_rows))
    return out


def subm_conv3d_torch(x: SparseTensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Plain-PyTorch submanifold conv; returns output features ``[N, C_out]``."""
    cout, k = weight.shape[0], weight.shape[1]
    cin = weight.shape[-1]
    feats = x.feats
    if k == 1:
        # spconv 2.x 1x1 shortcut: the [C_out,1,1,1,C_in] buffer read as [C_in, C_out]
        out = feats @ weight.reshape(cin, cout)
        return out + bias if bias is not None else out
    key = f"subm_nbr_{k}"
    nbrs = x.cache.get(key)
    if nbrs is None or (len(nbrs) and nbrs[0][1] is not None and nbrs[0][1].device != feats.device):
        nbrs = submanifold_neighbours(x.coords, k)
        x.cache[key] = nbrs
    w = weight.reshape(cout, k * k * k, cin)
    out = None
    for kidx, out_rows, in_rows in nbrs:
        if out_rows is None:
            out = torch.nn.functional.linear(feats, w[:, kidx], bias)
            break
    if out is None:  # k*k*k without a centre never happens for odd k; keep it safe
        out = feats.new_zeros(feats.shape[0], cout) + (bias if bias is not None else 0)
    for kidx, out_rows, in_rows in nbrs:
        if out_rows is None:
            continue
        out.index_add_(0, out_rows, feats[in_rows] @ w[:, kidx].t())
    return out


# ---------------------------------------------------------------------------- spconv path
def _spconv_tensor(x: SparseTensor):
    sp = _SPCONV
    st = x.cache.get("spconv_tensor")
    if st is None:
        spatial = (x.coords[:, 1:].max(dim=0).values + 1).tolist()
        st = sp.SparseConvTensor(x.feats, x.coords.int().contiguous(), spatial, x.batch_size)
        x.cache["spconv_tensor"] = st
        return st
    return st.replace_feature(x.feats)


class SubMConv3dParams(nn.Module):
    """Parameter holder with spconv's names and layout (``weight [C_out,k,k,k,C_in]``, ``bias``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        k = kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, k, k, k, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        if self.weight.is_meta:
            return
        fan_in = self.in_channels * self.kernel_size ** 3
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


class SparseConv3d(nn.Module):
    """Submanifold conv (stride 1). Keys: ``conv.weight``, ``conv.bias`` as in the released files."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = True, indice_key: Optional[str] = None):
        super().__init__()
        if stride != 1:
            raise NotImplementedError("only submanifold (stride 1) sparse convs are used by TRELLIS models")
        self.conv = SubMConv3dParams(in_channels, out_channels, kernel_size, bias)
        self.indice_key = indice_key
        self._spconv_module = []  # not registered: holds a spconv module sharing our parameters

    def _spconv_forward(self, x: SparseTensor) -> torch.Tensor:
        if not self._spconv_module:
            sp = _SPCONV
            k = self.conv.kernel_size
            algo = os.environ.get("TRELLIS_SPCONV_ALGO", "").lower()
            kw = {}
            if algo:
                from spconv.core import ConvAlgo
                kw["algo"] = {"native": ConvAlgo.Native, "mask_implicit_gemm": ConvAlgo.MaskImplicitGemm,
                              "mask_split_implicit_gemm": ConvAlgo.MaskSplitImplicitGemm
                              }.get(algo)
                if kw["algo"] is None:
                    raise ValueError(f"unknown TRELLIS_SPCONV_ALGO {algo!r}")
            m = sp.SubMConv3d(self.conv.in_channels, self.conv.out_channels, k,
                              bias=self.conv.bias is not None, indice_key=f"trellis_subm{k}_{algo}", **kw)
            self._spconv_module.append(m)
        m = self._spconv_module[0]
        m.train(self.training)
        # share (not copy) the parameters; re-bound every call so .to()/.half() are followed
        m.weight = self.conv.weight
        if self.conv.bias is not None:
            m.bias = self.conv.bias
        out = m(_spconv_tensor(x))
        return out.features

    def forward(self, x: SparseTensor) -> SparseTensor:
        backend = get_sparse_conv_backend(x.feats.device)
        auto = (_BACKEND_OVERRIDE or os.environ.get("TRELLIS_SPCONV_BACKEND", "auto")) == "auto"
        combo = (x.feats.dtype, self.training)
        if backend == "spconv" and not (auto and combo in _SPCONV_FAILED):
            try:
                feats = self._spconv_forward(x)
            except Exception as e:  # noqa: BLE001 - spconv raises plain RuntimeErrors/asserts
                if not auto:
                    raise
                _SPCONV_FAILED.add(combo)
                warnings.warn(f"spconv failed for {combo} ({type(e).__name__}: {str(e)[:200]}); "
                              "using the torch sparse-conv path for it from now on")
                feats = subm_conv3d_torch(x, self.conv.weight, self.conv.bias)
        else:
            feats = subm_conv3d_torch(x, self.conv.weight, self.conv.bias)
        return x.replace(feats)
