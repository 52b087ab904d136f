"""The model-stage convention (catalogs.modelstage) on every model stage: precision as a param with one
name and no `auto`, weights checked on the worker against the planned hash, Hub references pinned
to a commit (a loopback Hub), and the one registry of tiny seeded models."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from catalogs.catalog import Catalog
from catalogs.modelstage import PINS_KEY, ModelStage
from catalogs.stage import WeightsMismatch, classify
from curation.aesthetic import AestheticStage
from encode.features import FeatureStage
from encode.latents import SLatStage, SSLatentStage
from pipeline.executor import register_models
from tests.encode import synth
from tests.encode.hub import FakeHub
from trellis_core.models.tiny import TINY_KINDS, save_tiny

TINY = {FeatureStage: {"model": "tiny:dinov2"}, SSLatentStage: {"model": "tiny:ss_enc"},
        SLatStage: {"model": "tiny:slat_enc", "feature_model": "dinov2_tiny"},
        AestheticStage: {"model": "tiny:clip", "head": "tiny:aesthetic_head", "name": "aesthetic_tiny"}}
UP = {"render": "r", "voxelize": "v", "features": "f"}


@pytest.fixture(autouse=True)
def model_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TRELLIS_MODEL_CACHE", str(tmp_path_factory.getbasetemp() / "model-cache"))


def hf_cache(monkeypatch, folder) -> None:
    """Point huggingface_hub at an empty cache (it reads HF_HOME once, at import)."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(folder))


@pytest.fixture
def hub(monkeypatch, tmp_path):
    h = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    hf_cache(monkeypatch, tmp_path / "hf-driver")
    yield h
    h.close()


@pytest.mark.parametrize("cls", list(TINY), ids=lambda c: c.name)
def test_precision_is_a_param_with_one_name_and_no_auto(cls):
    assert issubclass(cls, ModelStage)
    assert "precision" in {f.name for f in dataclasses.fields(cls.Params)}
    with pytest.raises(ValueError, match="precision"):
        cls({**TINY[cls], "precision": "auto"})
    a, b = (cls({**TINY[cls], "precision": p}) for p in cls.precisions[:2])
    assert a.fingerprint(UP) != b.fingerprint(UP)  # the arithmetic is part of what a fingerprint names
    assert a.model_info()["config"]["precision"] == cls.precisions[0]
    assert "model" not in a.params_dict() and "head" not in a.params_dict()  # locations are not fingerprinted
    info = a.model_info()
    assert info["pretrained"] is False and "NOT PRETRAINED" in info["note"]


def test_fp16_means_fp16_on_a_cpu_worker_too(ctx):
    t = synth.write_asset(ctx.store, synth.sha(0), n_views=1)
    half = SSLatentStage({"model": "tiny:ss_enc"}, {"device": "cpu"})
    full = SSLatentStage({"model": "tiny:ss_enc", "precision": "fp32"}, {"device": "cpu"})
    assert half.params.precision == "fp16"
    za = np.load(ctx.store.path(ctx.store.rel(half.run(t, ctx).uri)))["mean"]  # one variant: same file, read it now
    zb = np.load(ctx.store.path(ctx.store.rel(full.run(t, ctx).uri)))["mean"]
    assert half.model.dtype == torch.float16 and full.model.dtype == torch.float32
    assert not np.array_equal(za, zb) and np.abs(za - zb).max() < 0.05 * np.abs(zb).max()


@pytest.mark.parametrize("kind,cls", [("dinov2", FeatureStage), ("slat_enc", SLatStage)])
def test_a_worker_fails_assets_whose_weights_are_not_the_planned_ones(kind, cls, tmp_path, ctx):
    folder = save_tiny(kind, tmp_path / "m" / kind)
    params = {**TINY[cls], "model": str(folder)}
    planner = cls(params)
    pins = planner.pins()
    assert pins[PINS_KEY]["model"]["weights_sha256"] == planner.weights_hash()
    # the same location holds other weights by the time (or on the node where) a worker loads it
    save_tiny(kind, folder, seed=1)
    worker = cls(params, {**pins})
    tasks = [synth.write_asset(ctx.store, synth.sha(i), n_views=2, seed=i) for i in range(2)]
    out = worker.run_batch(tasks, ctx)
    assert all(isinstance(r, WeightsMismatch) for r in out), out
    assert classify(out[0]) == ("weights_mismatch", False) and planner.weights_hash()[:16] in str(out[0])
    assert worker.model is None  # nothing was loaded, nothing computed
    # with the planned weights back, the same worker config runs
    save_tiny(kind, folder, seed=0)
    assert not isinstance(cls(params, {**pins}).run_batch(tasks[:1], ctx)[0], WeightsMismatch)


def test_hub_reference_resolves_to_a_pinned_commit_recorded_in_models(hub, tmp_path, monkeypatch, ctx):
    a = hub.push_folder("acme/dino", save_tiny("dinov2", tmp_path / "a", seed=0))
    planner = FeatureStage({"model": "acme/dino"})
    info = planner.model_info()
    assert info["source"] == f"acme/dino@{a}" and info["config"]["revision"] == a
    cat = Catalog(tmp_path / "catalog.duckdb")
    register_models(cat, [planner])
    assert cat.query("SELECT source FROM models WHERE stage = 'features'").to_pylist() == [{"source": f"acme/dino@{a}"}]
    pins = planner.pins()
    assert pins[PINS_KEY]["model"]["revision"] == a

    # main moves to other weights while the build runs; a worker on another node (empty HF cache)
    b = hub.push_folder("acme/dino", save_tiny("dinov2", tmp_path / "b", seed=1))
    hf_cache(monkeypatch, tmp_path / "hf-worker")
    worker = FeatureStage({"model": "acme/dino"}, {**pins, "batch_views": 2})
    assert worker.model_ref().revision == a
    assert worker.model_ref().weights_sha256() == planner.weights_hash()
    assert not isinstance(worker.run_batch([synth.write_asset(ctx.store, synth.sha(0), n_views=2)], ctx)[0], Exception)
    assert ("GET", f"/acme/dino/resolve/{a}/model.safetensors") in hub.log
    assert ("GET", f"/acme/dino/resolve/{b}/model.safetensors") not in hub.log
    # an unpinned stage now sees main (= b): another hash, hence another fingerprint
    fresh = FeatureStage({"model": "acme/dino"})
    assert fresh.model_ref().revision == b and fresh.fingerprint(UP) != planner.fingerprint(UP)
    # an explicit revision in the location is honoured
    assert FeatureStage({"model": f"acme/dino@{a}"}).weights_hash() == planner.weights_hash()


def test_hub_trellis_stem_pins_config_and_weights_to_one_commit(hub, tmp_path):
    stem = save_tiny("slat_enc", tmp_path / "r" / "ckpts" / "slat_enc_tiny")
    c = hub.push_folder("acme/trellis", stem.parent.parent)
    st = SLatStage({"model": "acme/trellis/ckpts/slat_enc_tiny", "feature_model": "dinov2_tiny"})
    assert st.model_name == "slat_enc_tiny"
    assert st.model_info()["source"] == f"acme/trellis@{c}/ckpts/slat_enc_tiny"
    assert st.pins()[PINS_KEY]["model"] == {"revision": c, "weights_sha256": st.weights_hash()}


def test_one_registry_of_tiny_models():
    from trellis_core.generate import DinoV2Conditioner
    from trellis_core.models.tiny import TINY_DINOV2

    assert {"dinov2", "clip", "ss_enc", "slat_enc", "aesthetic_head"} <= set(TINY_KINDS)
    # the conditioner's tiny DINOv2 is the registry's, at another size
    cond = DinoV2Conditioner.tiny(hidden_size=16, image_size=56)
    assert cond.model.config.num_register_tokens == TINY_DINOV2["num_register_tokens"]
    assert cond.model.config.patch_size == TINY_DINOV2["patch_size"] and cond.channels == 16
    with pytest.raises(ValueError, match="tiny:"):
        FeatureStage({"model": "tiny:nonsense"}).variant
