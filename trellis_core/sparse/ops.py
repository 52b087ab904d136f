"""Spatial re-sampling of sparse tensors (MODELS.md 2.11)."""
from __future__ import annotations

import torch
from torch import nn

from .tensor import SparseTensor

__all__ = ["sparse_downsample", "sparse_upsample", "sparse_subdivide",
           "SparseDownsample", "SparseUpsample", "SparseSubdivide"]

_CHILD_OFFSETS = torch.tensor(
    [[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=torch.int32
)  # (0,0,0), (0,0,1), (0,1,0), ... last axis fastest


def sparse_downsample(x: SparseTensor, factor: int = 2) -> SparseTensor:
    """Pool voxels into cells of ``factor``³.

    Reference quirk kept on purpose: the pooled value is ``sum(children) / (n_children + 1)``
    (a zero-initialised ``scatter_reduce(mean)`` that counts the initial zero). The output is in
    lexicographic (b, x, y, z) order. The fine structure is cached for :func:`sparse_upsample`.
    """
    coords = x.coords.long()
    coarse = torch.div(coords[:, 1:], factor, rounding_mode="floor")
    if coords.shape[0] == 0:
        raise ValueError("cannot down-sample an empty sparse tensor")
    dims = coarse.max(dim=0).values + 1  # X, Y, Z
    X, Y, Z = (int(v) for v in dims.tolist())
    code = coords[:, 0] * (X * Y * Z) + coarse[:, 0] * (Y * Z) + coarse[:, 1] * Z + coarse[:, 2]
    ucode, inverse = torch.unique(code, sorted=True, return_inverse=True)
    m = ucode.shape[0]
    new_coords = torch.stack([
        torch.div(ucode, X * Y * Z, rounding_mode="floor"),
        torch.div(ucode, Y * Z, rounding_mode="floor") % X,
        torch.div(ucode, Z, rounding_mode="floor") % Y,
        ucode % Z,
    ], dim=1).to(torch.int32)
    feats = x.feats
    flat = feats.reshape(feats.shape[0], -1)
    summed = torch.zeros((m, flat.shape[1]), dtype=feats.dtype, device=feats.device)
    summed.index_add_(0, inverse, flat)
    count = torch.bincount(inverse, minlength=m).to(feats.dtype) + 1  # +1: the reference's zero
    pooled = (summed / count[:, None]).reshape(m, *feats.shape[1:])
    out = SparseTensor(pooled, new_coords)
    out.cache[f"upsample_{factor}"] = (x.coords, x.cache, inverse)
    return out


def sparse_upsample(x: SparseTensor, factor: int = 2) -> SparseTensor:
    """Nearest up-sampling that undoes the paired :func:`sparse_downsample` (same coords and order)."""
    entry = x.cache.get(f"upsample_{factor}")
    if entry is None:
        raise RuntimeError("sparse_upsample needs a tensor produced by sparse_downsample "
                           "(its fine structure is cached there)")
    fine_coords, fine_cache, inverse = entry
    return SparseTensor(x.feats[inverse], fine_coords, cache=fine_cache)


def sparse_subdivide(x: SparseTensor) -> SparseTensor:
    """Each voxel ``c`` becomes 8 voxels ``2c + (i, j, k)``, parent-major, last axis fastest."""
    offs = _CHILD_OFFSETS.to(x.coords.device)
    n = x.coords.shape[0]
    xyz = (x.coords[:, None, 1:] * 2 + offs[None]).reshape(-1, 3)
    b = x.coords[:, :1].repeat_interleave(8, dim=0)
    coords = torch.cat([b, xyz], dim=1)
    feats = x.feats.repeat_interleave(8, dim=0)
    out = SparseTensor(feats, coords)
    if x._layout is not None or "_layout" in x.cache:
        out._layout = [slice(s.start * 8, s.stop * 8) for s in x.layout]
    return out


class SparseDownsample(nn.Module):
    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_downsample(x, self.factor)


class SparseUpsample(nn.Module):
    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_upsample(x, self.factor)


class SparseSubdivide(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_subdivide(x)
