"""Aesthetic scoring with tiny seeded models, quality signals, duplicates."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from catalogs.catalog import Catalog
from catalogs.stage import ArtifactRef, AssetTask, MissingUpstream, ModelConfigMismatch, StageContext, UnsupportedFormat
from catalogs.store import Store
from curation.aesthetic import AestheticStage, build_mlp, load_mlp, pick_views
from curation.package import write_package
from curation.quality import QualityStage, exact_duplicates, near_duplicates, relations
from curation.sources.sample import build_sample
from curation_fixtures import sha
from pipeline.executor import register_models


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """The registry's tiny seeded CLIP and aesthetic head, as local files (params of the stage)."""
    from trellis_core.models.tiny import save_tiny

    d = tmp_path_factory.mktemp("models")
    return {"model": str(save_tiny("clip", d / "clip")), "head": str(save_tiny("aesthetic_head", d / "mlp.pth")),
            "name": "aesthetic_tiny"}


def _renders(store: Store, sha256: str, seed: int, n: int = 8, size: int = 48) -> str:
    rng = np.random.default_rng(seed)
    for i in range(n):
        a = rng.integers(0, 255, (size, size, 4), dtype=np.uint8)
        a[..., 3] = np.where(rng.random((size, size)) > 0.3, 255, 0)
        buf = io.BytesIO()
        Image.fromarray(a, "RGBA").save(buf, format="PNG")
        store.write_bytes(f"renders/{sha256}/{i:03d}.png", buf.getvalue())
    store.write_bytes(f"renders/{sha256}/transforms.json", b"{}")
    return store.uri(f"renders/{sha256}")


def _task(sha256: str, uri: str | None, stage: str = "render") -> AssetTask:
    return AssetTask(sha256=sha256, asset={"sha256": sha256}, inputs={stage: ArtifactRef(uri=uri)})


def test_mlp_structure_and_strict_keys(tmp_path, tiny_models):
    import torch

    mlp = load_mlp(tiny_models["head"])
    assert [type(m).__name__ for m in mlp.layers] == ["Linear", "Dropout", "Linear", "Dropout", "Linear", "Dropout",
                                                      "Linear", "Linear"]
    assert [mlp.layers[i].out_features for i in (0, 2, 4, 6, 7)] == [1024, 128, 64, 16, 1]
    bad = dict(torch.load(tiny_models["head"], weights_only=True))
    bad["layers.1.weight"] = bad.pop("layers.0.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ModelConfigMismatch, match="keys differ"):
        load_mlp(tmp_path / "bad.pth")


def test_pick_views():
    names = [f"{i:03d}.png" for i in range(150)]
    assert pick_views(names, 4) == ["000.png", "038.png", "075.png", "112.png"]
    with pytest.raises(MissingUpstream):
        pick_views(names[:3], 4)


def test_aesthetic_deterministic_and_recorded(tmp_path, tiny_models):
    store = Store(str(tmp_path / "store"))
    cat = Catalog(tmp_path / "cat.duckdb")
    shas = [sha(b"a"), sha(b"b"), sha(b"c")]
    uris = [_renders(store, s, seed=i) for i, s in enumerate(shas)]
    ctx = StageContext(store=store)
    tasks = [_task(s, u) for s, u in zip(shas, uris)] + [_task(sha(b"none"), None)]

    st = AestheticStage({"n_views": 4, **tiny_models})
    res = st.run_batch(tasks, ctx)
    assert isinstance(res[3], MissingUpstream)
    scores = [r.metrics["score"] for r in res[:3]]
    assert len(set(scores)) == 3 and all(np.isfinite(scores))
    assert res[0].metrics["views"] == ["000.png", "002.png", "004.png", "006.png"]
    assert res[0].metrics["score"] == pytest.approx(np.mean(res[0].metrics["view_scores"]), abs=1e-6)

    # a fresh stage (another worker) gives bit-identical scores for the same batch...
    st2 = AestheticStage({"n_views": 4, **tiny_models})
    assert [r.metrics["score"] for r in st2.run_batch(tasks, ctx)[:3]] == scores
    # ...and, batched differently, the same scores up to float rounding of the batched matmuls
    st2.config["image_batch"] = 3
    res2 = [st2.run(t, ctx) for t in tasks[:3]]
    assert [r.metrics["score"] for r in res2] == pytest.approx(scores, rel=1e-5, abs=1e-6)
    assert res2[0].metrics["recipe_id"] == res[0].metrics["recipe_id"]

    # the recipe is recorded with both weight hashes, labelled not pretrained
    register_models(cat, [st])
    row = cat.query("SELECT * FROM models WHERE stage = 'aesthetic'").to_pylist()[0]
    assert row["pretrained"] is False and "not pretrained" in row["note"].lower()
    assert row["weights_sha256"] == st.weights_hash() and row["variant"] == "aesthetic_tiny"
    recipe = json.loads(row["config"])
    assert recipe["recipe_id"] == res[0].metrics["recipe_id"]
    assert len(recipe["clip_weights_sha256"]) == 64 and len(recipe["mlp_weights_sha256"]) == 64
    assert recipe["background"] == [255, 255, 255] and recipe["views"]["n_views"] == 4

    # another background is another recipe and another fingerprint
    st3 = AestheticStage({"n_views": 4, "background": [0, 0, 0], **tiny_models})
    assert st3.recipe_id() != st.recipe_id()
    assert st3.fingerprint({"render": "x"}) != st.fingerprint({"render": "x"})
    assert st3.run(tasks[0], ctx).metrics["score"] != scores[0]

    # the embeddings artifact feeds near-duplicate detection: identical renders -> a pair
    res[0] = st.run(tasks[0], ctx)  # st3 overwrote this asset's embeddings with its own recipe
    dup = sha(b"a-copy")
    _renders(store, dup, seed=0)
    r_dup = st.run(_task(dup, store.uri(f"renders/{dup}")), ctx)
    recs = [{"sha256": s, "stage": "aesthetic", "variant": st.variant, "status": "ok", "uri": r.uri,
             "metrics": r.metrics, "attempts": 1} for s, r in zip(shas + [dup], res[:3] + [r_dup])]
    cat.upsert_artifacts(recs)
    assert near_duplicates(cat, store, threshold=0.999) == 1
    (rel,) = relations(cat, "near_duplicate")
    assert {rel["sha_a"], rel["sha_b"]} == {shas[0], dup} and rel["score"] > 0.999


# -- quality ---------------------------------------------------------------------------------------
def _ingested(store: Store, name: str, data: bytes, fmt: str) -> AssetTask:
    s = sha(data)
    rel = f"raw/test/{s}.{fmt}"
    store.write_bytes(rel, data)
    return AssetTask(sha256=s, asset={"sha256": s, "format": fmt}, inputs={"ingest": ArtifactRef(uri=store.uri(rel))})


def test_quality_signals(tmp_path):
    store = Store(str(tmp_path / "store"))
    ctx = StageContext(store=store)
    st = QualityStage()
    m_cyl = st.run(_ingested(store, "cylinder", build_sample("cylinder"), "glb"), ctx).metrics
    assert m_cyl["textures"] == 1 and m_cyl["textured_fraction"] == 1.0 and m_cyl["components"] == 1
    m_box = st.run(_ingested(store, "box", build_sample("box"), "obj"), ctx).metrics
    assert m_box["faces"] == 12 and m_box["vertices"] == 8 and m_box["textureless_fraction"] == 1.0
    assert m_box["bbox_aspect"] == pytest.approx(1.0 / 0.4)
    m_ico = st.run(_ingested(store, "ico", build_sample("icosphere"), "ply"), ctx).metrics
    assert m_ico["textured_fraction"] == 1.0 and m_ico["textures"] == 0  # vertex colours
    m_tab = st.run(_ingested(store, "table", build_sample("table"), "glb"), ctx).metrics
    assert m_tab["components"] == 5 and m_tab["geometries"] >= 2 and not m_tab["has_transparency"]
    assert m_tab["file_size"] == len(build_sample("table")) and m_tab["content_sha256"] == sha(build_sample("table"))
    with pytest.raises(UnsupportedFormat):
        st.run(_ingested(store, "b", b"BLENDER-v300", "blend"), ctx)


def test_quality_on_package_and_exact_duplicates(tmp_path):
    store = Store(str(tmp_path / "store"))
    cat = Catalog(tmp_path / "cat.duckdb")
    ctx = StageContext(store=store)
    obj = build_sample("box")
    pkg = tmp_path / "p.zip"
    write_package(pkg, {"raw_model.obj": obj, "image.jpg": b"img"}, entry="raw_model.obj", identity="image.jpg")
    t_pkg = _ingested(store, "pkg", pkg.read_bytes(), "zip")
    t_pkg = AssetTask(sha256=sha(b"img"), asset=dict(t_pkg.asset), inputs=t_pkg.inputs)
    m = QualityStage().run(t_pkg, ctx).metrics
    assert m["faces"] == 12 and m["content_sha256"] == sha(obj) and m["file_sha256"] != sha(obj)
    # the same obj also listed directly by another source: an exact duplicate of the package's model
    t_obj = _ingested(store, "obj", obj, "obj")
    m2 = QualityStage().run(t_obj, ctx).metrics
    cat.upsert_assets([{"sha256": sha(b"img"), "source": "future3d"}, {"sha256": sha(obj), "source": "objaverse_github"}])
    cat.upsert_artifacts([{"sha256": t.sha256, "stage": "quality", "variant": "", "status": "ok", "metrics": mm,
                           "attempts": 1} for t, mm in ((t_pkg, m), (t_obj, m2))])
    assert exact_duplicates(cat) == 1
    (rel,) = relations(cat, "exact_duplicate")
    assert {rel["sha_a"], rel["sha_b"]} == {sha(b"img"), sha(obj)}
    assert cat.scalar("SELECT count(*) FROM assets") == 2  # nothing deleted
