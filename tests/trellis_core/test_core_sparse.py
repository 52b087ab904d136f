"""Sparse tensor ops and the plain-PyTorch submanifold conv against dense references."""
import torch
import torch.nn.functional as F

from trellis_core.sparse import (SparseConv3d, SparseTensor, sparse_downsample, sparse_subdivide, sparse_upsample,
                                 set_sparse_conv_backend)


def _random_sparse(n_per=(40, 25), res=8, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    cs, fs = [], []
    for b, n in enumerate(n_per):
        idx = torch.randperm(res ** 3, generator=g)[:n].sort().values
        xyz = torch.stack([idx // (res * res), (idx // res) % res, idx % res], 1)
        cs.append(torch.cat([torch.full((n, 1), b), xyz], 1))
        fs.append(torch.randn(n, c, generator=g, dtype=torch.float64))
    return SparseTensor(torch.cat(fs), torch.cat(cs).int())


def _dense(x: SparseTensor, res):
    B, C = x.batch_size, x.feats.shape[1]
    d = torch.zeros(B, C, res, res, res, dtype=x.feats.dtype)
    c = x.coords.long()
    d[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = x.feats
    return d


def test_layout_batch_unbatch():
    x = _random_sparse()
    assert x.batch_size == 2 and x.batch_lengths() == [40, 25]
    parts = x.unbatch()
    y = SparseTensor.from_batch([p.feats for p in parts], [p.coords[:, 1:] for p in parts])
    assert torch.equal(y.coords, x.coords) and torch.equal(y.feats, x.feats)
    z = x.replace(x.feats * 2)
    assert z.cache is x.cache and torch.equal(z.feats, 2 * x.feats)


def test_subm_conv_matches_dense_conv3d():
    set_sparse_conv_backend("torch")
    try:
        res, cin, cout = 8, 5, 7
        x = _random_sparse(res=res, c=cin, seed=1)
        conv = SparseConv3d(cin, cout, 3).double()
        with torch.no_grad():
            conv.conv.weight.normal_()
            conv.conv.bias.normal_()
        out = conv(x).feats
        w_dense = conv.conv.weight.permute(0, 4, 1, 2, 3)  # [Cout,k,k,k,Cin] -> [Cout,Cin,k,k,k]
        dense = F.conv3d(_dense(x, res), w_dense, conv.conv.bias, padding=1)
        c = x.coords.long()
        ref = dense[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    finally:
        set_sparse_conv_backend(None)


def test_kernel1_conv_reproduces_spconv_shortcut():
    x = _random_sparse(c=6)
    conv = SparseConv3d(6, 4, 1).double()
    w = conv.conv.weight  # [4,1,1,1,6]
    expect = x.feats @ w.reshape(6, 4) + conv.conv.bias
    torch.testing.assert_close(conv(x).feats, expect)
    proper = x.feats @ w[:, 0, 0, 0, :].t() + conv.conv.bias
    assert not torch.allclose(expect, proper)


def test_downsample_reference_mean_and_order():
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 5, 5, 5], [1, 2, 2, 2]], dtype=torch.int32)
    feats = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    x = SparseTensor(feats, coords)
    y = sparse_downsample(x, 2)
    assert y.coords.tolist() == [[0, 0, 0, 0], [0, 2, 2, 2], [1, 1, 1, 1]]
    # children 1, 2, 3 -> (1+2+3)/(3+1) = 1.5 (the reference counts its zero initialiser)
    assert y.feats[:, 0].tolist() == [1.5, 2.0, 2.5]
    z = sparse_upsample(y.replace(y.feats * 10), 2)
    assert torch.equal(z.coords, x.coords)
    assert z.feats[:, 0].tolist() == [15.0, 15.0, 15.0, 20.0, 25.0]


def test_downsample_unsorted_input_keeps_pairing():
    x = _random_sparse(seed=3)
    perm0 = torch.randperm(40)
    perm = torch.cat([perm0, 40 + torch.randperm(25)])
    xs = SparseTensor(x.feats[perm], x.coords[perm])
    y = sparse_downsample(xs, 2)
    key = y.coords[:, 0] * 1000 + y.coords[:, 1] * 100 + y.coords[:, 2] * 10 + y.coords[:, 3]
    assert torch.all(key[1:] > key[:-1])
    z = sparse_upsample(y, 2)
    assert torch.equal(z.coords, xs.coords)


def test_subdivide_order():
    x = SparseTensor(torch.tensor([[1.0], [2.0]]), torch.tensor([[0, 1, 2, 3], [1, 0, 0, 0]], dtype=torch.int32))
    y = sparse_subdivide(x)
    assert y.coords[:8, 1:].tolist() == [[2 + i, 4 + j, 6 + k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    assert y.coords[8:, 0].tolist() == [1] * 8
    assert y.feats[:, 0].tolist() == [1.0] * 8 + [2.0] * 8
    assert y.batch_lengths() == [8, 8]
