"""Attention backends and sparse attention modes agree with explicit per-sequence softmax attention."""
import math

import pytest
import torch

from trellis_core.attention import (attention_backend, dense_attention, sparse_self_attention, swin_partition,
                                    varlen_attention)
from trellis_core.attention.backends import resolve_backend
from trellis_core.sparse import SparseTensor


def _ref(q, k, v):
    a = (q.transpose(0, 1) @ k.transpose(0, 1).transpose(1, 2)) / math.sqrt(q.shape[-1])
    return (a.softmax(-1) @ v.transpose(0, 1)).transpose(0, 1)


@pytest.mark.parametrize("mode", ["bucket", "pad", "nested", "varlen"])
def test_varlen_modes(mode):
    g = torch.Generator().manual_seed(0)
    ql, kl = [5, 3, 5, 1, 7], [4, 6, 4, 2, 7]
    q = torch.randn(sum(ql), 2, 8, generator=g, dtype=torch.float64)
    k = torch.randn(sum(kl), 2, 8, generator=g, dtype=torch.float64)
    v = torch.randn(sum(kl), 2, 8, generator=g, dtype=torch.float64)
    out = varlen_attention(q, k, v, ql, kl, sdpa_mode=mode)  # varlen/nested fall back to bucket on CPU
    qs = ks = 0
    for a, b in zip(ql, kl):
        torch.testing.assert_close(out[qs:qs + a], _ref(q[qs:qs + a], k[ks:ks + b], v[ks:ks + b]))
        qs, ks = qs + a, ks + b
    naive = varlen_attention(q, k, v, ql, kl, backend="naive")
    torch.testing.assert_close(out, naive)


def test_dense_attention_matches_reference():
    q, k, v = (torch.randn(2, 9, 3, 4, dtype=torch.float64) for _ in range(3))
    out = dense_attention(q, k, v)
    for b in range(2):
        torch.testing.assert_close(out[b], _ref(q[b], k[b], v[b]))


def test_swin_windows_and_order():
    g = torch.Generator().manual_seed(1)
    coords = torch.cat([torch.cat([torch.full((60, 1), b), torch.randint(0, 16, (60, 3), generator=g)], 1)
                        for b in range(2)]).int()
    coords = torch.unique(coords, dim=0)
    n = coords.shape[0]
    x = SparseTensor(torch.zeros(n, 1), coords)
    q, k, v = (torch.randn(n, 2, 4, generator=g, dtype=torch.float64) for _ in range(3))
    for shift in (0, 4):
        out = sparse_self_attention(x, q, k, v, mode="swin", window_size=8, shift=shift)
        win = torch.cat([coords[:, :1], torch.div(coords[:, 1:] + shift, 8, rounding_mode="floor")], 1)
        for w in torch.unique(win, dim=0):
            idx = (win == w).all(1).nonzero(as_tuple=True)[0]
            torch.testing.assert_close(out[idx], _ref(q[idx], k[idx], v[idx]))
        fwd, inv, lens, cu = swin_partition(x, 8, shift)
        assert sum(lens) == n and torch.equal(fwd[inv], torch.arange(n))
        assert cu.dtype == torch.int32 and cu.tolist() == [0, *torch.tensor(lens).cumsum(0).tolist()]


def test_backend_selection(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_backend(None, cpu) == "sdpa"
    monkeypatch.setenv("TRELLIS_ATTN_BACKEND", "naive")
    assert resolve_backend(None, cpu) == "naive"
    with attention_backend("sdpa"):
        assert resolve_backend(None, cpu) == "sdpa"
        assert resolve_backend("naive", cpu) == "naive"
    # CUDA-only kernels fall back to SDPA on CPU tensors
    assert resolve_backend("xformers", cpu) == "sdpa"
    with pytest.raises(ValueError):
        resolve_backend("nope", cpu)
