"""from_pretrained / save_pretrained, Hub paths offline, weights hashing, pipelines and samplers."""
import json

import pytest
import torch

import trellis_core
from trellis_core import (HubDownloadError, SLatEncoder, from_pretrained, save_pretrained,
                          weights_sha256)
from trellis_core.models import TINY_CONFIGS
from trellis_core.pipeline import TrellisPipeline
from trellis_core.samplers import FlowEulerGuidanceIntervalSampler, FlowEulerSampler, timesteps

TINY = TINY_CONFIGS


@pytest.mark.parametrize("name", sorted(TINY))
def test_save_load_roundtrip(tmp_path, name):
    torch.manual_seed(0)
    model = trellis_core.get_model_class(name)(**TINY[name], use_fp16=True).eval()
    save_pretrained(model, tmp_path / "ckpts" / "m")
    cfg = json.loads((tmp_path / "ckpts" / "m.json").read_text())
    assert cfg["name"] == name and cfg["args"]["use_fp16"] is True
    loaded = from_pretrained(str(tmp_path / "ckpts" / "m"))
    assert type(loaded) is type(model) and not loaded.training
    sd0, sd1 = model.state_dict(), loaded.state_dict()
    assert sd0.keys() == sd1.keys()
    assert all(sd0[k].dtype == sd1[k].dtype and torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert weights_sha256(model) == weights_sha256(loaded) == weights_sha256(str(tmp_path / "ckpts" / "m"))
    assert weights_sha256(tmp_path / "ckpts" / "m.safetensors") == weights_sha256(sd0)


def test_weights_hash_changes_with_content():
    a = {"x": torch.zeros(3), "y": torch.ones(2, dtype=torch.float16)}
    b = {"y": torch.ones(2, dtype=torch.float16), "x": torch.zeros(3)}
    assert weights_sha256(a) == weights_sha256(b)
    assert weights_sha256(a) != weights_sha256({**a, "x": torch.tensor([0.0, 0.0, 1.0])})
    assert weights_sha256(a) != weights_sha256({**a, "x": torch.zeros(3, dtype=torch.float64)})


def test_elastic_name_and_extra_kwargs(tmp_path):
    model = SLatEncoder(**TINY["SLatEncoder"])
    save_pretrained(model, tmp_path / "enc")
    cfg = json.loads((tmp_path / "enc.json").read_text())
    cfg["name"] = "ElasticSLatEncoder"
    (tmp_path / "enc.json").write_text(json.dumps(cfg))
    m = from_pretrained(str(tmp_path / "enc"), use_checkpoint=True)
    assert isinstance(m, SLatEncoder) and m.use_checkpoint
    with pytest.raises(RuntimeError):  # strict matching: a wrong architecture does not load
        from_pretrained(str(tmp_path / "enc"), num_blocks=3)


def test_offline_hub_path_gives_typed_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(HubDownloadError, match="microsoft/TRELLIS-image-large"):
        from_pretrained("microsoft/TRELLIS-image-large/ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16")
    with pytest.raises(HubDownloadError, match="pipeline.json"):
        TrellisPipeline.from_pretrained("microsoft/TRELLIS-text-base")
    with pytest.raises(FileNotFoundError):
        from_pretrained(str(tmp_path / "missing"))


def test_import_does_not_touch_hub():
    import subprocess
    import sys
    code = ("import sys, trellis_core, trellis_core.pipeline, trellis_core.samplers; "
            "print('huggingface_hub' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_timesteps_and_euler_on_exact_velocity():
    ts = timesteps(4, 3.0)
    assert ts[0] == 1.0 and ts[-1] == 0.0 and all(a > b for a, b in zip(ts, ts[1:]))
    # a model that returns the exact velocity of a fixed x0 takes noise to x0 (sigma_min = 0)
    x0 = torch.randn(2, 3)

    class Exact(torch.nn.Module):
        def forward(self, x, t, cond):
            tt = (t / 1000)[:, None]
            eps = (x - (1 - tt) * x0) / tt.clamp_min(1e-8)
            return eps - x0

    out = FlowEulerSampler(sigma_min=0.0).sample(Exact(), torch.randn(2, 3), None, steps=5).samples
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=1e-5)


def test_guidance_interval_uses_cfg_only_inside():
    calls = []

    class M(torch.nn.Module):
        def forward(self, x, t, cond):
            calls.append((float(t[0]) / 1000, float(cond.flatten()[0])))
            return torch.zeros_like(x)

    FlowEulerGuidanceIntervalSampler().sample(M(), torch.zeros(1, 2), torch.ones(1, 1), neg_cond=torch.zeros(1, 1),
                                              steps=4, cfg_strength=3.0, cfg_interval=(0.5, 1.0))
    neg_ts = [t for t, c in calls if c == 0.0]
    assert neg_ts and all(0.5 <= t <= 1.0 for t in neg_ts)
    assert len(calls) == 4 + len(neg_ts)


def test_pipeline_json_loading_and_generation(tmp_path):
    torch.manual_seed(0)
    root, other = tmp_path / "repo", tmp_path / "elsewhere"
    names = {"sparse_structure_flow_model": "SparseStructureFlowModel",
             "sparse_structure_decoder": "SparseStructureDecoder",
             "slat_flow_model": "SLatFlowModel"}
    models = {}
    for role, cls in names.items():
        m = trellis_core.get_model_class(cls)(**TINY[cls])
        if cls == "SparseStructureDecoder":  # keep ~3% of the voxels so the test stays fast
            with torch.no_grad():
                q = torch.quantile(m(torch.randn(1, 8, 4, 4, 4)).flatten(), 0.97)
                m.out_layer[2].bias -= q
        save_pretrained(m, root / "ckpts" / role)
        models[role] = f"ckpts/{role}"
    gs = trellis_core.get_model_class("SLatGaussianDecoder")(**TINY["SLatGaussianDecoder"])
    save_pretrained(gs, other / "gs")
    models["slat_decoder_gs"] = str(other / "gs")  # not under the root: the fallback rule loads it
    sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
               "params": {"steps": 2, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}
    spec = {"name": "TrellisImageTo3DPipeline", "args": {
        "models": models, "sparse_structure_sampler": sampler, "slat_sampler": sampler,
        "slat_normalization": {"mean": [0.0] * 8, "std": [1.0] * 8}, "image_cond_model": "dinov2_vitl14_reg"}}
    (root / "pipeline.json").write_text(json.dumps(spec))
    pipe = TrellisPipeline.from_pretrained(str(root))
    assert set(pipe.models) == set(models)
    assert pipe.sparse_structure_sampler_params["steps"] == 2
    cond = torch.randn(1, 5, 16)
    out = pipe.run_from_cond(cond, torch.zeros_like(cond), num_samples=1, seed=1, formats=("gaussian",))
    assert len(out["gaussian"]) == 1 and out["gaussian"][0].get_xyz.shape[1] == 3
