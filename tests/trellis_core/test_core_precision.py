"""Half-precision torsos (MODELS.md 2.13): which tensors are converted, and that fp16/bf16 forwards stay
close to the fp32 forward; training-time gradient checkpointing gives the same gradients."""
import pytest
import torch

import trellis_core
from trellis_core import SparseTensor

from trellis_core.models import TINY_CONFIGS as TINY


def _sparse(c, res=16, n=(30, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    cs = []
    for b, m in enumerate(n):
        idx = torch.randperm(res ** 3, generator=g)[:m].sort().values
        cs.append(torch.stack([torch.full((m,), b), idx // res ** 2, (idx // res) % res, idx % res], 1))
    coords = torch.cat(cs).int()
    return SparseTensor(torch.randn(coords.shape[0], c, generator=g), coords)


def _inputs(name):
    g = torch.Generator().manual_seed(5)
    if name == "SparseStructureEncoder":
        return ((torch.rand(2, 1, 16, 16, 16, generator=g) > 0.7).float(),)
    if name == "SparseStructureDecoder":
        return (torch.randn(2, 8, 4, 4, 4, generator=g),)
    if name == "SparseStructureFlowModel":
        return torch.randn(2, 8, 4, 4, 4, generator=g), torch.tensor([100.0, 900.0]), torch.randn(2, 5, 16, generator=g)
    if name == "SLatFlowModel":
        return _sparse(8), torch.tensor([100.0, 900.0]), torch.randn(2, 5, 16, generator=g)
    if name == "SLatEncoder":
        return (_sparse(12),)
    return (_sparse(8),)


def _out(name, model, args):
    if name == "SLatGaussianDecoder":
        return model.decode_features(*args).feats
    if name == "SLatEncoder":
        return model(*args, sample_posterior=False).feats
    out = model(*args)
    return out.feats if isinstance(out, SparseTensor) else out


@pytest.mark.parametrize("name", ["SLatEncoder", "SLatFlowModel", "SparseStructureFlowModel", "SLatGaussianDecoder"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_torso_close_to_fp32(name, dtype):
    torch.manual_seed(0)
    cls = trellis_core.get_model_class(name)
    ref_model = cls(**TINY[name]).eval()
    half = cls(**TINY[name], use_fp16=True).eval()
    half.load_state_dict(ref_model.state_dict())
    if dtype != torch.float16:
        half.convert_torso(dtype)
    # norms, RMS gammas and buffers stay fp32; torso linears are converted
    for k, v in half.state_dict().items():
        if "norm" in k or k in ("pos_emb", "offset_perturbation") or k.startswith(("input_layer", "out_layer", "t_embedder")):
            assert v.dtype == torch.float32, k
    assert any(v.dtype == dtype for v in half.state_dict().values())
    args = _inputs(name)
    with torch.no_grad():
        a = _out(name, ref_model, args)
        b = _out(name, half, args)
    assert b.dtype == torch.float32
    err = (a - b).abs().max() / a.abs().max()
    assert err < (2e-2 if dtype == torch.float16 else 8e-2), float(err)


def test_gradient_checkpointing_same_grads():
    torch.manual_seed(0)
    m1 = trellis_core.SLatEncoder(**TINY["SLatEncoder"])
    m2 = trellis_core.SLatEncoder(**TINY["SLatEncoder"], use_checkpoint=True)
    m2.load_state_dict(m1.state_dict())
    x = _sparse(12)
    for m in (m1, m2):
        m.train()
        m(x, sample_posterior=False).feats.square().sum().backward()
    for (k, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, msg=k)
