"""Tiny SS and SLat flows trained on the demo-like dataset (CPU): loss falls, checkpoints round-trip
through from_pretrained, generation from a cond image gives a non-empty mesh, seeds are deterministic."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from trellis_core import from_pretrained
from trellis_core.data import SLatDataset, SSLatentDataset
from trellis_core.generate import ImageTo3DPipeline, TextTo3DPipeline, marching_tetrahedra, save_mesh, write_pipeline
from trellis_core.train import SLatFlowTrainer, SSFlowTrainer, TrainConfig

from tests.training.helpers import COND_SIZE, tiny_cond, tiny_mesh_decoder, tiny_slat_flow, tiny_ss_decoder, tiny_ss_flow

STEPS = int(os.environ.get("TRELLIS_TEST_TRAIN_STEPS", "60"))


def _falls(hist, k=None):
    k = k or max(5, len(hist) // 5)
    first = np.mean([h["loss"] for h in hist[:k]])
    last = np.mean([h["loss"] for h in hist[-k:]])
    return first, last


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    m = demo["manifest"]
    cond = tiny_cond()
    cfg = dict(batch_size=4, lr=2e-3, max_steps=STEPS, ema_rates=(0.9,), log_every=0, p_uncond=0.1)
    ss = SSFlowTrainer(tiny_ss_flow(), SSLatentDataset(m, cond="image", image_size=COND_SIZE),
                       TrainConfig(out_dir=str(out / "ss"), **cfg), cond_model=cond)
    ss_hist = ss.train()
    sl = SLatFlowTrainer(tiny_slat_flow(), SLatDataset(m, normalization="trellis", cond="image", image_size=COND_SIZE),
                         TrainConfig(out_dir=str(out / "slat"), **cfg), cond_model=cond)
    sl_hist = sl.train()
    return {"out": out, "ss": ss, "slat": sl, "ss_hist": ss_hist, "slat_hist": sl_hist, "cond": cond}


def test_losses_fall(trained):
    for key in ("ss_hist", "slat_hist"):
        first, last = _falls(trained[key])
        assert np.isfinite(last) and last < 0.8 * first, (key, first, last)


def test_checkpoint_round_trip(trained):
    for key in ("ss", "slat"):
        tr = trained[key]
        stem = tr.ckpt_stem("denoiser")
        assert os.path.exists(stem + ".json") and os.path.exists(stem + ".safetensors")
        m = from_pretrained(stem)
        ref = tr.models["denoiser"].state_dict()
        assert set(m.state_dict()) == set(ref)
        assert all(torch.equal(m.state_dict()[k].cpu(), ref[k].cpu()) for k in ref)
        ema = from_pretrained(tr.ckpt_stem("denoiser", ema=0.9))
        assert any(not torch.equal(ema.state_dict()[k], ref[k].cpu()) for k in ref if ref[k].is_floating_point())


def test_resume_continues_identically(demo, tmp_path):
    m = demo["manifest"]
    cfg = dict(batch_size=2, lr=1e-3, ema_rates=(0.9,), log_every=0, p_uncond=0.0)
    cond = tiny_cond()
    ds = lambda: SSLatentDataset(m, cond="image", image_size=COND_SIZE)  # noqa: E731
    a = SSFlowTrainer(tiny_ss_flow(), ds(), TrainConfig(out_dir=str(tmp_path / "a"), max_steps=6, **cfg),
                      cond_model=cond)
    full = [h["loss"] for h in a.train()]
    b = SSFlowTrainer(tiny_ss_flow(), ds(), TrainConfig(out_dir=str(tmp_path / "b"), max_steps=6, save_every=3, **cfg),
                      cond_model=cond)
    b.train(max_steps=3)                              # stops mid-epoch (4 batches of 2 per epoch)
    c = SSFlowTrainer(tiny_ss_flow(seed=5), ds(),
                      TrainConfig(out_dir=str(tmp_path / "b"), max_steps=6, save_every=3, **cfg), cond_model=cond)
    assert c.load() == 3
    rest = [h["loss"] for h in c.train()]
    np.testing.assert_allclose(full[3:], rest, rtol=1e-5)


def _calibrate(decoder, ss_flow_dataset, frac=0.01):
    """Test-only: shift the random decoder's output bias so ~frac of the grid is occupied."""
    with torch.no_grad():
        z = torch.stack([ss_flow_dataset[i]["x_0"] for i in range(2)])
        logits = decoder(z)
        q = torch.quantile(logits.flatten()[::7], 1 - frac)
        decoder.out_layer[-1].bias -= q
    return decoder


@pytest.fixture(scope="module")
def pipeline_dir(trained, demo):
    folder = str(trained["out"] / "pipeline")
    ss, sl = trained["ss"], trained["slat"]
    write_pipeline(folder, {
        "sparse_structure_flow_model": ss.ckpt_stem("denoiser", ema=0.9),
        "slat_flow_model": sl.ckpt_stem("denoiser", ema=0.9),
        "sparse_structure_decoder": _calibrate(tiny_ss_decoder(), SSLatentDataset(demo["manifest"])),
        "slat_decoder_mesh": tiny_mesh_decoder(),
    }, conditioner=trained["cond"], kind="image",
        slat_normalization=SLatDataset(demo["manifest"], normalization="trellis").normalization.to_dict(),
        ss_sampler={"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                    "params": {"steps": 4, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}},
        slat_sampler={"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
                      "params": {"steps": 4, "cfg_strength": 3.0, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}})
    return folder


def _cond_png(demo, tmp_path):
    rec = demo["manifest"].records()[0]
    path = tmp_path / "cond.png"
    path.write_bytes(demo["store"].read_bytes(rec["cond"] + "/000.png"))
    return str(path)


def test_generate_mesh_deterministic(pipeline_dir, demo, tmp_path):
    pipe = ImageTo3DPipeline.from_pretrained(pipeline_dir)
    img = Image.open(_cond_png(demo, tmp_path))
    a = pipe.run(img, seed=0)
    b = pipe.run(img, seed=0)
    c = pipe.run(img, seed=1)
    mesh = a["mesh"][0]
    assert 0 < a["coords"].shape[0] < 64 ** 3 // 10
    assert len(mesh["faces"]) > 0 and np.all(np.abs(mesh["vertices"]) <= 0.5 + 1e-6)
    assert torch.equal(a["coords"], b["coords"]) and torch.equal(a["slat"].feats, b["slat"].feats)
    assert np.array_equal(mesh["faces"], b["mesh"][0]["faces"])
    assert not (a["coords"].shape == c["coords"].shape and torch.equal(a["coords"], c["coords"])
                and torch.equal(a["slat"].feats, c["slat"].feats))
    out = save_mesh(mesh, str(tmp_path / "mesh.glb"))
    import trimesh
    assert len(trimesh.load(out, force="mesh").faces) == len(mesh["faces"])


def test_cli_generate(pipeline_dir, demo, tmp_path):
    from click.testing import CliRunner
    from pipeline.cli import main
    out = tmp_path / "cli.glb"
    r = CliRunner().invoke(main, ["generate", "--pipeline", pipeline_dir, "--image", _cond_png(demo, tmp_path),
                                  "--out", str(out), "--seed", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert out.exists() and "faces" in r.output


def test_text_to_3d(demo, tmp_path):
    from trellis_core.generate import ClipTextConditioner
    text = ClipTextConditioner.tiny(hidden_size=16)
    m = demo["manifest"]
    cfg = TrainConfig(out_dir=str(tmp_path / "txt"), batch_size=2, max_steps=3, ema_rates=(0.9,), log_every=0)
    tr = SSFlowTrainer(tiny_ss_flow(cond_channels=16), SSLatentDataset(m, cond="text"), cfg, cond_model=text)
    assert np.isfinite(tr.train()[-1]["loss"])
    sampler = {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5},
               "params": {"steps": 2, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}}
    folder = write_pipeline(str(tmp_path / "tp"), {
        "sparse_structure_flow_model": tr.ckpt_stem("denoiser"),
        "slat_flow_model": tiny_slat_flow(cond_channels=16),
        "sparse_structure_decoder": _calibrate(tiny_ss_decoder(), SSLatentDataset(m)),
        "slat_decoder_mesh": tiny_mesh_decoder()}, conditioner=text, kind="text",
        slat_normalization={"mean": [0.0] * 8, "std": [1.0] * 8}, ss_sampler=sampler, slat_sampler=sampler)
    pipe = TextTo3DPipeline.from_pretrained(folder)
    a, b = pipe.run("a small box", seed=3), pipe.run("a small box", seed=3)
    assert len(a["mesh"][0]["faces"]) > 0 and np.array_equal(a["mesh"][0]["faces"], b["mesh"][0]["faces"])


def test_marching_tetrahedra_sphere():
    res = 32
    g = np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    corners = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])
    p = (g[:, None] + corners[None]) / res - 0.5
    sdf = np.linalg.norm(p, axis=-1) - 0.3
    v, f = marching_tetrahedra(g, sdf, res)
    import trimesh
    mesh = trimesh.Trimesh(v, f)
    assert mesh.is_watertight and mesh.volume > 0
    assert abs(mesh.volume - 4 / 3 * np.pi * 0.3 ** 3) / (4 / 3 * np.pi * 0.3 ** 3) < 0.03
