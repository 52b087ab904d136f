"""Dense and variable-length (block-diagonal) softmax attention, scale 1/sqrt(head_dim).

Layouts: dense ``q [B, Lq, H, d]``, ``k, v [B, Lk, H, d]`` -> ``[B, Lq, H, d]``.
Variable length: ``q [Nq, H, d]``, ``k, v [Nk, H, d]`` with per-sequence lengths (python lists);
sequence ``i`` of q attends to sequence ``i`` of k/v only -> ``[Nq, H, d]``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .backends import resolve_backend, sdpa_varlen_mode

__all__ = ["dense_attention", "varlen_attention", "cumulative_lengths"]


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    name = resolve_backend(backend, q.device)
    if name == "xformers":
        import xformers.ops as xops
        return xops.memory_efficient_attention(q, k, v)
    if name == "flash_attn":
        import flash_attn
        return flash_attn.flash_attn_func(q, k, v)
    if name == "naive":
        return _naive(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _naive(q, k, v):
    scale = 1.0 / math.sqrt(q.shape[-1])
    attn = torch.einsum("blhd,bmhd->bhlm", q, k) * scale
    attn = attn.softmax(dim=-1)
    return torch.einsum("bhlm,bmhd->blhd", attn, v)


def cumulative_lengths(lens: Sequence[int], device) -> torch.Tensor:
    """int32 ``[0, l0, l0+l1, ...]`` on ``device`` (through pinned memory: no stream synchronisation)."""
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(list(lens), dtype=torch.int64).cumsum(0)
    if torch.device(device).type == "cuda":
        cu = cu.pin_memory()
    return cu.to(device, non_blocking=True)


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    q_lens: Sequence[int], kv_lens: Sequence[int],
    backend: Optional[str] = None, sdpa_mode: Optional[str] = None,
    cu_seqlens: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """``cu_seqlens``: the cumulative lengths of q and k/v on the device, if the caller has them
    (sparse attention caches them per window partition), else they are built from the lists."""
    if len(q_lens) != len(kv_lens):
        raise ValueError("q_lens and kv_lens must have one entry per sequence")
    if len(q_lens) == 0:
        return q.new_zeros(q.shape[0], q.shape[1], v.shape[-1])
    if len(q_lens) == 1:
        return dense_attention(q[None], k[None], v[None], backend)[0]
    name = resolve_backend(backend, q.device)
    if name == "xformers":
        import xformers.ops as xops
        mask = xops.fmha.BlockDiagonalMask.from_seqlens(list(q_lens), list(kv_lens))
        return xops.memory_efficient_attention(q[None], k[None], v[None], mask)[0]

    def cu():
        return cu_seqlens or (cumulative_lengths(q_lens, q.device), cumulative_lengths(kv_lens, q.device))

    if name == "flash_attn":
        import flash_attn
        cq, ck = cu()
        return flash_attn.flash_attn_varlen_func(q, k, v, cq, ck, max(q_lens), max(kv_lens))
    if name == "naive":
        return _by_sequence(q, k, v, q_lens, kv_lens, _naive)
    mode = sdpa_varlen_mode(q.device, sdpa_mode)
    if mode == "varlen" and q.dtype not in (torch.float16, torch.bfloat16):
        mode = "nested"  # flash-based varlen_attn takes half precision only
    if mode == "varlen":
        from torch.nn.attention.varlen import varlen_attn
        cq, ck = cu()
        return varlen_attn(q, k, v, cq, ck, max(q_lens), max(kv_lens))
    if mode == "nested":
        return _nested(q, k, v, *cu())
    if mode == "pad":
        return _padded(q, k, v, q_lens, kv_lens)
    return _bucket(q, k, v, q_lens, kv_lens)


def _sdpa_bhld(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _by_sequence(q, k, v, q_lens, kv_lens, fn):
    outs, qs, ks = [], 0, 0
    for lq, lk in zip(q_lens, kv_lens):
        outs.append(fn(q[None, qs:qs + lq], k[None, ks:ks + lk], v[None, ks:ks + lk])[0])
        qs += lq
        ks += lk
    return torch.cat(outs, 0)


def _bucket(q, k, v, q_lens, kv_lens):
    """Group sequences with equal (Lq, Lk) and run one batched SDPA per group."""
    H, d, dv = q.shape[1], q.shape[2], v.shape[2]
    q_lens_t = torch.tensor(list(q_lens), dtype=torch.int64)
    kv_lens_t = torch.tensor(list(kv_lens), dtype=torch.int64)
    q_start = torch.zeros_like(q_lens_t)
    q_start[1:] = q_lens_t.cumsum(0)[:-1]
    k_start = torch.zeros_like(kv_lens_t)
    k_start[1:] = kv_lens_t.cumsum(0)[:-1]
    pair = q_lens_t * (int(kv_lens_t.max()) + 1) + kv_lens_t
    upair, inv = torch.unique(pair, return_inverse=True)
    out = q.new_empty(q.shape[0], H, dv)
    dev = q.device
    for gi in range(upair.shape[0]):
        seqs = (inv == gi).nonzero(as_tuple=True)[0]
        lq = int(q_lens_t[seqs[0]])
        lk = int(kv_lens_t[seqs[0]])
        if lq == 0:
            continue
        qi = (q_start[seqs][:, None] + torch.arange(lq)[None]).reshape(-1).to(dev)
        ki = (k_start[seqs][:, None] + torch.arange(lk)[None]).reshape(-1).to(dev)
        g = seqs.shape[0]
        qq = q.index_select(0, qi).view(g, lq, H, d)
        kk = k.index_select(0, ki).view(g, lk, H, d)
        vv = v.index_select(0, ki).view(g, lk, H, dv)
        out.index_copy_(0, qi, _sdpa_bhld(qq, kk, vv).reshape(g * lq, H, dv))
    return out


def _nested(q, k, v, cq, ck):
    cq, ck = cq.long(), ck.long()
    nq = torch.nested.nested_tensor_from_jagged(q, cq)
    nk = torch.nested.nested_tensor_from_jagged(k, ck)
    nv = torch.nested.nested_tensor_from_jagged(v, ck)
    o = F.scaled_dot_product_attention(nq.transpose(1, 2), nk.transpose(1, 2), nv.transpose(1, 2))
    return o.transpose(1, 2).values()


def _padded(q, k, v, q_lens, kv_lens):
    B = len(q_lens)
    H, d, dv = q.shape[1], q.shape[2], v.shape[2]
    mq, mk = max(q_lens), max(kv_lens)
    dev = q.device
    ql = torch.tensor(list(q_lens), device=dev)
    kl = torch.tensor(list(kv_lens), device=dev)
    qmask = torch.arange(mq, device=dev)[None] < ql[:, None]
    kmask = torch.arange(mk, device=dev)[None] < kl[:, None]
    qp = q.new_zeros(B, mq, H, d)
    kp = k.new_zeros(B, mk, H, d)
    vp = v.new_zeros(B, mk, H, dv)
    qp[qmask] = q
    kp[kmask] = k
    vp[kmask] = v
    attn_mask = kmask[:, None, None, :]  # (B, 1, 1, Lk)
    o = F.scaled_dot_product_attention(qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2),
                                       attn_mask=attn_mask).transpose(1, 2)
    return o[qmask]
