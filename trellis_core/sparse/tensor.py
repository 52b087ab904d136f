"""A minimal sparse voxel tensor: int32 coordinates ``[N, 4]`` = (batch, x, y, z) plus features.

Rows of one batch instance are contiguous and instances appear in increasing batch index.
Spatial structures derived from the coordinates (neighbour maps of submanifold convs,
attention windows, the down-sampling map needed by the paired up-sampler, spconv tensors)
are cached in ``cache``; the cache dict is shared by every tensor produced with
:meth:`SparseTensor.replace` while the coordinates stay the same.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

__all__ = ["SparseTensor", "sparse_cat"]


class SparseTensor:
    __slots__ = ("feats", "coords", "cache", "_layout")

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        cache: Optional[Dict[str, Any]] = None,
        layout: Optional[List[slice]] = None,
    ):
        if coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be [N, 4], got {tuple(coords.shape)}")
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats rows {feats.shape[0]} != coords rows {coords.shape[0]}")
        if coords.dtype != torch.int32:
            coords = coords.to(torch.int32)
        self.feats = feats
        self.coords = coords
        self.cache = {} if cache is None else cache
        self._layout = layout

    # ------------------------------------------------------------------ structure
    @property
    def layout(self) -> List[slice]:
        """Per-instance row slices (computed once from the batch column)."""
        if self._layout is None:
            lay = self.cache.get("_layout")
            if lay is None:
                lay = _layout_from_batch(self.coords[:, 0])
                self.cache["_layout"] = lay
            self._layout = lay
        return self._layout

    @property
    def batch_size(self) -> int:
        return len(self.layout)

    @property
    def shape(self):
        return torch.Size([self.batch_size, *self.feats.shape[1:]])

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def batch_index(self) -> torch.Tensor:
        """int64 batch index per row (cached)."""
        bi = self.cache.get("_batch_index")
        if bi is None or bi.device != self.coords.device:
            bi = self.coords[:, 0].long()
            self.cache["_batch_index"] = bi
        return bi

    def batch_lengths(self) -> List[int]:
        return [s.stop - s.start for s in self.layout]

    # ------------------------------------------------------------------ construction
    def replace(self, feats: torch.Tensor, coords: Optional[torch.Tensor] = None) -> "SparseTensor":
        """New tensor with new features; keeps coords and the shared cache unless coords change."""
        if coords is None:
            return SparseTensor(feats, self.coords, cache=self.cache, layout=self._layout)
        return SparseTensor(feats, coords)

    @classmethod
    def from_batch(cls, feats_list: Sequence[torch.Tensor], coords_list: Sequence[torch.Tensor]) -> "SparseTensor":
        """Build from per-instance ``feats [N_b, C]`` and ``coords [N_b, 3]`` (x, y, z)."""
        cs, fs = [], []
        for b, (f, c) in enumerate(zip(feats_list, coords_list)):
            c = c.to(torch.int32)
            bcol = torch.full((c.shape[0], 1), b, dtype=torch.int32, device=c.device)
            cs.append(torch.cat([bcol, c], dim=1))
            fs.append(f)
        return cls(torch.cat(fs, 0), torch.cat(cs, 0))

    def unbatch(self) -> List["SparseTensor"]:
        """Split into single-instance tensors (batch column reset to 0)."""
        out = []
        for s in self.layout:
            c = self.coords[s].clone()
            c[:, 0] = 0
            out.append(SparseTensor(self.feats[s], c))
        return out

    def to(self, *args, **kwargs) -> "SparseTensor":
        feats = self.feats.to(*args, **kwargs)
        device = feats.device
        if device != self.coords.device:
            return SparseTensor(feats, self.coords.to(device), layout=self._layout)
        return self.replace(feats)

    def type(self, dtype: torch.dtype) -> "SparseTensor":
        return self.replace(self.feats.type(dtype))

    def half(self):
        return self.type(torch.float16)

    def float(self):
        return self.type(torch.float32)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    def detach(self):
        return self.replace(self.feats.detach())

    # ------------------------------------------------------------------ arithmetic
    def per_instance(self, dense: torch.Tensor) -> torch.Tensor:
        """Expand a dense ``(B, ...)`` tensor to one row per voxel of its instance."""
        return dense[self.batch_index]

    def _other(self, other):
        # SparseTensor operands combine row by row; plain tensors/scalars broadcast as in torch.
        # A dense per-instance (B, C) operand must be expanded explicitly with per_instance().
        if isinstance(other, SparseTensor):
            return other.feats
        return other

    def __add__(self, other):
        return self.replace(self.feats + self._other(other))

    __radd__ = __add__

    def __sub__(self, other):
        return self.replace(self.feats - self._other(other))

    def __rsub__(self, other):
        return self.replace(self._other(other) - self.feats)

    def __mul__(self, other):
        return self.replace(self.feats * self._other(other))

    __rmul__ = __mul__

    def __truediv__(self, other):
        return self.replace(self.feats / self._other(other))

    def __neg__(self):
        return self.replace(-self.feats)

    def __repr__(self) -> str:
        return (f"SparseTensor(n={self.feats.shape[0]}, feats={tuple(self.feats.shape)}, "
                f"dtype={self.feats.dtype}, batch={self.batch_size}, device={self.feats.device})")


def _layout_from_batch(batch_col: torch.Tensor) -> List[slice]:
    if batch_col.numel() == 0:
        return []
    b = batch_col.long()
    nb = int(b.max().item()) + 1
    counts = torch.bincount(b, minlength=nb).tolist()
    out, start = [], 0
    for c in counts:
        out.append(slice(start, start + c))
        start += c
    return out


def sparse_cat(tensors: Sequence[SparseTensor], dim: int = -1) -> SparseTensor:
    """Concatenate features of tensors sharing the same coords (channel concat)."""
    if dim == 0:
        raise ValueError("use SparseTensor.from_batch to stack instances")
    return tensors[0].replace(torch.cat([t.feats for t in tensors], dim=dim))
