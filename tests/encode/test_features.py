"""Feature stage with the tiny DINOv2: token choice, preprocessing, output format, parity with a
plain per-view reference, batching, and typed loader failures (never a hang, G19)."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from catalogs import layout
from catalogs.stage import CorruptFile, MissingUpstream, ModelConfigMismatch
from encode.features import FeatureStage, load_view, preprocess
from encode.plyio import read_points_ply
from encode.projection import cameras_from_transforms, project_uv
from tests.encode import synth
from tests.encode.conftest import npz


@pytest.fixture(scope="module")
def fp32_stage(models):
    st = FeatureStage({"model": models["dinov2"], "precision": "fp32"}, {"batch_views": 3, "loader_threads": 2})
    st.setup()
    yield st
    st.close()


def test_tokens_are_x_prenorm_not_last_hidden_state(fp32_stage, models):
    from transformers import Dinov2WithRegistersModel

    ref = Dinov2WithRegistersModel.from_pretrained(models["dinov2"]).eval()
    x = torch.randint(0, 256, (2, 518, 518, 4), dtype=torch.uint8)
    with torch.no_grad():
        out = ref(pixel_values=preprocess(x), output_hidden_states=True)
    toks = fp32_stage.tokens(x)
    want = out.hidden_states[-1][:, 5:].transpose(1, 2).reshape(2, 64, 37, 37)
    torch.testing.assert_close(toks, want, atol=1e-5, rtol=1e-5)
    assert (out.last_hidden_state[:, 5:].transpose(1, 2).reshape(2, 64, 37, 37) - toks).abs().max() > 0.1


def test_preprocessing_is_lanczos_518_premultiplied_imagenet():
    rgba = np.random.default_rng(0).integers(0, 256, (512, 512, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    arr = load_view(buf.getvalue(), 518)
    ref = np.asarray(Image.fromarray(rgba, "RGBA").resize((518, 518), Image.Resampling.LANCZOS)).astype(np.float32) / 255
    ref = ref[..., :3] * ref[..., 3:]
    ref = (ref - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    got = preprocess(torch.from_numpy(arr[None]))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)


def reference_features(models, ctx, task) -> np.ndarray:
    """Straight from the spec: per view, hidden_states[-1] patches, grid_sample, mean, float16."""
    from transformers import Dinov2WithRegistersModel

    model = Dinov2WithRegistersModel.from_pretrained(models["dinov2"]).eval()
    rdir = layout.renders(task.sha256)
    names, w2c, K = cameras_from_transforms(json.loads(ctx.store.read_bytes(f"{rdir}/transforms.json")))
    pts = torch.from_numpy(read_points_ply(ctx.store.read_bytes(layout.voxels(task.sha256))))
    uv = project_uv(pts, torch.from_numpy(w2c), torch.from_numpy(K))
    acc = torch.zeros(len(pts), 64)
    for v, name in enumerate(names):
        img = Image.open(io.BytesIO(ctx.store.read_bytes(f"{rdir}/{name}"))).resize((518, 518), Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.asarray(img)).float() / 255
        x = (x[..., :3] * x[..., 3:] - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
        with torch.no_grad():
            h = model(pixel_values=x.permute(2, 0, 1)[None], output_hidden_states=True).hidden_states[-1]
        tok = h[:, 5:].transpose(1, 2).reshape(1, 64, 37, 37)
        acc += F.grid_sample(tok, (uv[v:v + 1] * 2 - 1)[:, None], mode="bilinear", padding_mode="zeros",
                             align_corners=False)[0, :, 0].T
    return (acc / len(names)).half().numpy()


def test_fp32_stage_matches_the_plain_reference_and_format(fp32_stage, models, ctx):
    tasks = [synth.write_asset(ctx.store, synth.sha(i), n_views=4, seed=i) for i in range(2)]
    res = fp32_stage.run_batch(tasks, ctx)
    for t, r in zip(tasks, res):
        assert not isinstance(r, BaseException), r
        assert r.uri.endswith(f"features/dinov2_tiny/{t.sha256}.npz")
        z = npz(ctx, r.uri)
        assert set(z.files) == {"indices", "patchtokens"}
        assert z["indices"].dtype == np.uint8 and z["indices"].shape == (r.metrics["num_voxels"], 3)
        assert z["patchtokens"].dtype == np.float16 and z["patchtokens"].shape == (r.metrics["num_voxels"], 64)
        ref = reference_features(models, ctx, t)
        np.testing.assert_allclose(z["patchtokens"].astype(np.float32), ref.astype(np.float32), atol=2e-3, rtol=2e-3)
        assert r.metrics["n_views"] == 4


def test_batching_across_assets_equals_one_at_a_time(fp32_stage, ctx):
    tasks = [synth.write_asset(ctx.store, synth.sha(i), n_views=3 + i, seed=i) for i in range(3)]
    together = [npz(ctx, r.uri)["patchtokens"] for r in fp32_stage.run_batch(tasks, ctx)]
    alone = [npz(ctx, fp32_stage.run(t, ctx).uri)["patchtokens"] for t in tasks]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=1e-3)


def test_bf16_default_is_close_to_fp32(models, fp32_stage, ctx):
    t = synth.write_asset(ctx.store, synth.sha(0), n_views=3)
    bf = FeatureStage({"model": models["dinov2"]}, {"batch_views": 3})
    assert bf.params.precision == "bf16" and bf.fingerprint({"render": "r", "voxelize": "v"}) != \
        fp32_stage.fingerprint({"render": "r", "voxelize": "v"})
    a = npz(ctx, bf.run(t, ctx).uri)["patchtokens"].astype(np.float32)
    b = npz(ctx, fp32_stage.run(t, ctx).uri)["patchtokens"].astype(np.float32)
    assert np.abs(a - b).mean() < 0.05 * np.abs(b).mean()


def test_loader_failures_are_typed_and_never_hang(fp32_stage, ctx):
    ok = synth.write_asset(ctx.store, synth.sha(0), n_views=3, seed=0)
    one_bad = synth.write_asset(ctx.store, synth.sha(1), n_views=3, seed=1)
    ctx.store.write_bytes(f"{layout.renders(one_bad.sha256)}/001.png", b"not a png")
    all_bad = synth.write_asset(ctx.store, synth.sha(2), n_views=2, seed=2)
    for i in range(2):
        ctx.store.write_bytes(f"{layout.renders(all_bad.sha256)}/{i:03d}.png", b"\x89PNG broken")
    no_tj = synth.write_asset(ctx.store, synth.sha(3), n_views=2, seed=3)
    ctx.store.delete(f"{layout.renders(no_tj.sha256)}/transforms.json")
    no_vox = synth.write_asset(ctx.store, synth.sha(4), n_views=2, seed=4)
    ctx.store.delete(layout.voxels(no_vox.sha256))
    bad_tj = synth.write_asset(ctx.store, synth.sha(5), n_views=2, seed=5)
    ctx.store.write_bytes(f"{layout.renders(bad_tj.sha256)}/transforms.json", b"{\"frames\": [{}]}")
    t0 = time.monotonic()
    res = fp32_stage.run_batch([ok, one_bad, all_bad, no_tj, no_vox, bad_tj], ctx)
    assert time.monotonic() - t0 < 60
    assert not isinstance(res[0], BaseException) and res[0].metrics["n_views"] == 3
    assert not isinstance(res[1], BaseException) and res[1].metrics["n_views"] == 2  # skipped view, as the reference
    assert "001.png" in res[1].metrics["skipped_views"][0]
    assert isinstance(res[2], CorruptFile)
    assert isinstance(res[3], MissingUpstream) and isinstance(res[4], MissingUpstream)
    assert isinstance(res[5], CorruptFile)


def test_wrong_model_type_is_a_config_mismatch(tmp_path, ctx):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=518, patch_size=14)).save_pretrained(str(tmp_path / "vit"))
    st = FeatureStage({"model": str(tmp_path / "vit")})
    t = synth.write_asset(ctx.store, synth.sha(0), n_views=2)
    assert isinstance(st.run_batch([t], ctx)[0], ModelConfigMismatch)


def test_offline_hub_id_gives_a_clear_error(monkeypatch, tmp_path):
    from trellis_core.locations import ModelUnavailable

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    st = FeatureStage({"model": "facebook/dinov2-with-registers-large"})
    assert st.variant == "dinov2_vitl14_reg"  # naming needs no download
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        st.weights_hash()


def test_fingerprint_depends_on_weights_not_location(models, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere" / "dino"
    shutil.copytree(models["dinov2"], moved)
    up = {"render": "r", "voxelize": "v"}
    a = FeatureStage({"model": models["dinov2"]})
    b = FeatureStage({"model": str(moved)})
    c = FeatureStage({"model": models["dinov2_seed1"]})
    assert a.variant == b.variant == c.variant == "dinov2_tiny"
    assert a.fingerprint(up) == b.fingerprint(up) != c.fingerprint(up)
    info = a.model_info()
    assert info["pretrained"] is False and info["config"]["hidden_size"] == 64 and len(info["weights_sha256"]) == 64


def test_png_decoders_give_pillows_pixels_and_route_other_kinds_to_pillow():
    from encode import pngdecode

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    kinds = {"RGBA": Image.fromarray(rgba, "RGBA"), "RGB": Image.fromarray(rgba[..., :3], "RGB"),
             "L": Image.fromarray(rgba[..., 0], "L"), "P": Image.fromarray(rgba[..., :3], "RGB").quantize(16),
             "I;16": Image.fromarray(rgba[..., 0].astype(np.uint16) * 257)}
    files = {}
    for mode, im in kinds.items():
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        files[mode] = buf.getvalue()
    buf = io.BytesIO()
    kinds["RGB"].save(buf, format="PNG", transparency=tuple(int(c) for c in rgba[0, 0, :3]))
    files["RGB+tRNS"] = buf.getvalue()
    assert {m for m, d in files.items() if pngdecode.plain_rgb8(d)} == {"RGBA", "RGB"}
    assert not pngdecode.plain_rgb8(b"\x89PNG broken")
    for name in pngdecode.available():
        for mode, data in files.items():
            np.testing.assert_array_equal(pngdecode.decode_rgba(data, name), pngdecode.decode_pil(data), err_msg=mode)
