"""SS latent and SLat stages with tiny models: format, batching, typed failures; latent statistics."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from catalogs import layout
from catalogs.catalog import Catalog
from catalogs.stage import MissingUpstream, ModelConfigMismatch, NonFinite
from encode.latents import SLatStage, SSLatentStage, pack_by_tokens
from encode.projection import voxel_indices
from encode.stats import latent_stats
from tests.encode import synth
from tests.encode.conftest import npz


def fake_features(ctx, sha: str, n_vox_seed: int = 0, dim: int = 64, model: str = "dinov2_tiny", radius: float = 0.3):
    idx = synth.shell_indices(radius, seed=n_vox_seed).astype(np.uint8)
    tok = np.random.default_rng(n_vox_seed).normal(size=(len(idx), dim)).astype(np.float16)
    buf = io.BytesIO()
    np.savez_compressed(buf, indices=idx, patchtokens=tok)
    rel = layout.features(model, sha)
    ctx.store.write_bytes(rel, buf.getvalue())
    t = synth.task(ctx.store, sha)
    return synth.with_input(t, "features", ctx.store.uri(rel)), idx


def test_ss_latent_format_and_batching(models, ctx):
    tasks = [synth.write_asset(ctx.store, synth.sha(i), n_views=1, seed=i, radius=0.2 + 0.05 * i) for i in range(3)]
    st = SSLatentStage({"model": models["ss_enc"], "precision": "fp32"}, {"encode_batch": 2})
    assert st.variant == "ss_enc_tiny"
    res = st.run_batch(tasks, ctx)
    for t, r in zip(tasks, res):
        assert not isinstance(r, BaseException), r
        assert r.uri.endswith(f"ss_latents/ss_enc_tiny/{t.sha256}.npz")
        z = npz(ctx, r.uri)
        assert z.files == ["mean"] and z["mean"].dtype == np.float32 and z["mean"].shape == (8, 16, 16, 16)
        alone = npz(ctx, st.run(t, ctx).uri)["mean"]
        np.testing.assert_allclose(z["mean"], alone, atol=1e-5)
    # the occupancy grid is indexed [x, y, z] from floor((p + .5) * 64): compare with a direct encode
    from trellis_core import from_pretrained
    from encode.plyio import read_points_ply

    idx = voxel_indices(read_points_ply(ctx.store.read_bytes(layout.voxels(tasks[0].sha256)))).astype(np.int64)
    x = torch.zeros(1, 1, 64, 64, 64)
    x[0, 0, idx[:, 0], idx[:, 1], idx[:, 2]] = 1
    with torch.no_grad():
        ref = from_pretrained(models["ss_enc"])(x, sample_posterior=False)[0].numpy()
    np.testing.assert_allclose(npz(ctx, res[0].uri)["mean"], ref, atol=1e-5)


def test_slat_format_order_and_batching_by_tokens(models, ctx):
    made = [fake_features(ctx, synth.sha(i), i, radius=0.15 + 0.1 * i) for i in range(3)]
    st = SLatStage({"model": models["slat_enc"], "feature_model": "dinov2_tiny"}, {"max_tokens": 6000})
    assert st.variant == "dinov2_tiny_slat_enc_tiny"
    assert len(list(pack_by_tokens([(i, ix, None) for i, (_, ix) in enumerate(made)], 6000))) >= 2
    res = st.run_batch([t for t, _ in made], ctx)
    for (t, idx), r in zip(made, res):
        assert not isinstance(r, BaseException), r
        assert r.uri.endswith(f"latents/dinov2_tiny_slat_enc_tiny/{t.sha256}.npz")
        z = npz(ctx, r.uri)
        assert set(z.files) == {"feats", "coords"}
        assert z["feats"].dtype == np.float32 and z["feats"].shape == (len(idx), 8)
        assert z["coords"].dtype == np.uint8 and np.array_equal(z["coords"], idx)  # features' row order
        alone = npz(ctx, st.run(t, ctx).uri)["feats"]
        np.testing.assert_allclose(z["feats"], alone, atol=1e-4)


def test_non_finite_latents_are_typed(models, ctx, tmp_path):
    from trellis_core import from_pretrained, save_pretrained

    ss = from_pretrained(models["ss_enc"])
    with torch.no_grad():
        ss.out_layer[2].bias.fill_(float("nan"))
    save_pretrained(ss, tmp_path / "nan_ss")
    sl = from_pretrained(models["slat_enc"])
    with torch.no_grad():
        sl.out_layer.bias.fill_(float("inf"))
    save_pretrained(sl, tmp_path / "nan_slat")
    t = synth.write_asset(ctx.store, synth.sha(0), n_views=1)
    assert isinstance(SSLatentStage({"model": str(tmp_path / "nan_ss")}).run_batch([t], ctx)[0], NonFinite)
    ft, _ = fake_features(ctx, synth.sha(1))
    out = SLatStage({"model": str(tmp_path / "nan_slat"), "feature_model": "dinov2_tiny"}).run_batch([ft], ctx)
    assert isinstance(out[0], NonFinite)


def test_missing_upstream_file_is_typed_per_asset(models, ctx):
    good, _ = fake_features(ctx, synth.sha(0))
    gone, _ = fake_features(ctx, synth.sha(1), 1)
    ctx.store.delete(layout.features("dinov2_tiny", gone.sha256))
    out = SLatStage({"model": models["slat_enc"], "feature_model": "dinov2_tiny"}).run_batch([good, gone], ctx)
    assert not isinstance(out[0], BaseException) and isinstance(out[1], MissingUpstream)
    t = synth.write_asset(ctx.store, synth.sha(2), n_views=1)
    ctx.store.delete(layout.voxels(t.sha256))
    assert isinstance(SSLatentStage({"model": models["ss_enc"]}).run_batch([t], ctx)[0], MissingUpstream)
    no_input = synth.task(ctx.store, synth.sha(3))  # no 'features' artifact at all
    assert isinstance(SLatStage({"model": models["slat_enc"], "feature_model": "dinov2_tiny"}).run_batch([no_input], ctx)[0],
                      MissingUpstream)


def test_mismatched_model_config_is_typed(models, ctx):
    ft, _ = fake_features(ctx, synth.sha(0))
    # encoder for 32-channel features fed 64-channel ones
    out = SLatStage({"model": models["slat_in32"], "feature_model": "dinov2_tiny"}).run_batch([ft], ctx)
    assert isinstance(out[0], ModelConfigMismatch) and "32" in str(out[0])
    # SLat stage configured for another feature model than the one that made the file
    out = SLatStage({"model": models["slat_enc"], "feature_model": "dinov2_vitl14_reg"}).run_batch([ft], ctx)
    assert isinstance(out[0], ModelConfigMismatch)
    # an SLat checkpoint given to the SS stage
    t = synth.write_asset(ctx.store, synth.sha(1), n_views=1)
    out = SSLatentStage({"model": models["slat_enc"]}).run_batch([t], ctx)
    assert isinstance(out[0], ModelConfigMismatch) and "SLatEncoder" in str(out[0])


def test_latent_stats_are_asset_weighted_and_recorded(tmp_path, ctx):
    cat = Catalog(tmp_path / "catalog.duckdb")
    rng = np.random.default_rng(0)
    rows, per_asset = [], []
    for i, n in enumerate([10, 1000, 50]):
        sha = synth.sha(i)
        feats = rng.normal(i, 1 + i, size=(n, 8)).astype(np.float32)
        buf = io.BytesIO()
        np.savez_compressed(buf, feats=feats, coords=np.zeros((n, 3), np.uint8))
        rel = layout.latents("v1", sha)
        ctx.store.write_bytes(rel, buf.getvalue())
        rows.append({"sha256": sha, "stage": "slat", "variant": "v1", "fingerprint": f"fp{i}", "status": "ok",
                     "uri": ctx.store.uri(rel), "attempts": 1})
        per_asset.append(feats.astype(np.float64))
    cat.upsert_assets([{"sha256": r["sha256"], "source": "test"} for r in rows])
    cat.upsert_artifacts(rows)
    st = latent_stats(cat, ctx.store, "v1", selection=f"SELECT sha256 FROM assets WHERE sha256 <> '{synth.sha(2)}'")
    m = np.mean([f.mean(0) for f in per_asset[:2]], 0)
    q = np.mean([(f * f).mean(0) for f in per_asset[:2]], 0)
    np.testing.assert_allclose(st.mean, m, rtol=1e-9)
    np.testing.assert_allclose(st.std, np.sqrt(q - m * m), rtol=1e-9)
    written = json.loads(ctx.store.read_bytes(layout.latent_stats("v1")))
    assert set(written) == {"mean", "std"} and len(written["mean"]) == 8
    row = cat.query("SELECT * FROM latent_stats").to_pylist()[0]
    assert row["n_used"] == 2 and row["selection"].startswith("SELECT") and json.loads(row["mean"]) == st.mean
    with pytest.raises(ValueError):
        latent_stats(cat, ctx.store, "nope")
