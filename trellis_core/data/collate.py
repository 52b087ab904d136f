"""Batch collation (DATA_FORMATS §9.3)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch

from ..sparse.tensor import SparseTensor
from .sampler import balanced_split

__all__ = ["collate_sparse", "collate_dense", "split_balanced"]


def _stack_rest(batch: Sequence[Dict[str, Any]], skip) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k in batch[0]:
        if k in skip:
            continue
        vals = [b[k] for b in batch]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.stack(vals)
        elif isinstance(vals[0], list):
            out[k] = sum(vals, [])
        else:
            out[k] = vals
    return out


def collate_sparse(batch: Sequence[Dict[str, Any]], key: str = "x_0") -> Dict[str, Any]:
    """``coords`` (N_i, 3) + ``feats`` (N_i, C) per sample -> one SparseTensor under ``key`` with int32
    rows ``[i, x, y, z]`` in batch order; other tensors stacked, lists concatenated, the rest listed."""
    sizes = [len(b["coords"]) for b in batch]
    total = sum(sizes)
    coords = torch.empty(total, 4, dtype=torch.int32)
    coords[:, 0] = torch.repeat_interleave(torch.arange(len(batch), dtype=torch.int32), torch.tensor(sizes))
    layout, start = [], 0
    for b, n in zip(batch, sizes):
        coords[start:start + n, 1:] = torch.as_tensor(b["coords"])
        layout.append(slice(start, start + n))
        start += n
    feats = torch.cat([torch.as_tensor(b["feats"]) for b in batch], 0)
    out = {key: SparseTensor(feats, coords, layout=layout)}
    out.update(_stack_rest(batch, ("coords", "feats")))
    return out


def collate_dense(batch: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    return _stack_rest(batch, ())


def split_balanced(batch: Sequence[Dict[str, Any]], split_size: int, key: str = "x_0") -> List[Dict[str, Any]]:
    """``SLat.collate_fn(batch, split_size)``: ``split_size`` packs balancing the voxel count
    (greedy, largest first), each collated separately."""
    loads = [len(b["coords"]) for b in batch]
    parts = balanced_split(loads, min(split_size, len(batch)))
    return [collate_sparse([batch[i] for i in p], key) for p in parts if p]
