"""RenderStage.run end to end on a store: layout, publish order, metrics, reproducible cameras."""

import json
import pickle

import numpy as np

from catalogs.stage import ArtifactRef, AssetTask, StageContext
from catalogs.store import Store
from conftest import sha_of
from render.stages import RenderCondStage, RenderStage


def _task(store, path, fmt, sha, rel_name):
    rel = f"raw/test/{rel_name}"
    store.put_file(path, rel)
    return AssetTask(sha, {"format": fmt}, {"ingest": ArtifactRef(store.uri(rel))})


def test_run_publishes_layout(wb_stage, fx, tmp_path):
    store = Store(str(tmp_path / "root"))
    ctx = StageContext(store, run_id="t")
    sha = sha_of(fx["obj_zip"])
    res = wb_stage.run(_task(store, fx["obj_zip"], "zip", sha, f"{sha}.zip"), ctx)
    rel = f"renders/{sha}"
    assert res.uri == store.uri(rel)
    names = sorted(n.split("/")[-1] for n in store.listdir(rel))
    assert names == ["000.png", "001.png", "002.png", "003.png", "mesh.ply", "transforms.json"]
    assert res.bytes == sum(store.size(f"{rel}/{n}") for n in names)
    m = res.metrics
    assert m["format"] == "obj" and m["n_views"] == 4 and m["n_textures"] == 1 and m["seconds_per_view"] > 0
    json.dumps(dict(m))  # metrics are JSON-serialisable for the catalog
    tj = json.loads(store.read_bytes(f"{rel}/transforms.json"))
    # same asset, same params: identical cameras on a re-run (G5)
    res2 = wb_stage.run(_task(store, fx["obj_zip"], "zip", sha, f"{sha}.zip"), ctx)
    tj2 = json.loads(store.read_bytes(f"{rel}/transforms.json"))
    assert tj2["trellis_data"]["offsets"] == tj["trellis_data"]["offsets"]
    assert np.allclose([f["transform_matrix"] for f in tj["frames"]], [f["transform_matrix"] for f in tj2["frames"]])
    assert res2.metrics["cold_start"] is False  # warm worker


def test_curation_package_renders(wb_stage, fx, tmp_path):
    """A curation asset package (zip + trellis_package.json) stored under the model's own extension."""
    from curation.package import write_package

    d = fx["obj"].parent
    pkg = write_package(tmp_path / "pkg.zip", {f.name: f for f in d.iterdir()}, entry="tex.obj")
    store = Store(str(tmp_path / "root"))
    sha = sha_of(pkg)
    res = wb_stage.run(_task(store, pkg, "obj", sha, f"{sha}.obj"), StageContext(store))
    assert res.metrics["format"] == "obj" and res.metrics["n_textures"] == 1  # the texture came along
    assert res.metrics["any_missing_texture"] is False


def test_plain_usdz_is_not_unpacked(wb_stage, fx, tmp_path):
    store = Store(str(tmp_path / "root"))
    sha = sha_of(fx["usdz"])
    res = wb_stage.run(_task(store, fx["usdz"], "usdz", sha, f"{sha}.usdz"), StageContext(store))
    assert res.metrics["format"] == "usdz" and res.metrics["n_faces"] > 0


def test_publish_order_transforms_last(wb_stage, fx, tmp_path, monkeypatch):
    store = Store(str(tmp_path / "root"))
    order = []
    orig = Store.put_file

    def spy(self, local, rel):
        order.append(rel.split("/")[-1])
        return orig(self, local, rel)

    monkeypatch.setattr(Store, "put_file", spy)
    sha = sha_of(fx["sphere"])
    wb_stage.run(_task(store, fx["sphere"], "glb", sha, f"{sha}.glb"), StageContext(store))
    assert order[-1] == "transforms.json" and "mesh.ply" in order[:-1]


def test_cond_stage_params_and_layout(fx, tmp_path):
    st = RenderCondStage(params={"engine": "BLENDER_WORKBENCH", "resolution": 48, "num_views": 3},
                         config={"threads": 2})
    assert RenderCondStage().params.num_views == 24 and RenderCondStage().params.resolution == 1024
    assert RenderStage().params.num_views == 150 and RenderStage().params.resolution == 512
    assert RenderStage().params.samples == 128 and RenderStage().params.engine == "CYCLES"
    store = Store(str(tmp_path / "root"))
    sha = sha_of(fx["box"])
    try:
        res = st.run(_task(store, fx["box"], "glb", sha, f"{sha}.glb"), StageContext(store))
    finally:
        st.close()
    assert res.uri.endswith(f"renders_cond/{sha}")
    assert sorted(n.split("/")[-1] for n in store.listdir(f"renders_cond/{sha}")) == [
        "000.png", "001.png", "002.png", "transforms.json"]


def test_fingerprint_depends_on_quality_params():
    a, b = RenderStage(), RenderStage(params={"samples": 16})
    assert a.fingerprint({"ingest": "x"}) != b.fingerprint({"ingest": "x"})
    assert RenderStage(config={"threads": 8}).fingerprint({"ingest": "x"}) == a.fingerprint({"ingest": "x"})
    assert RenderStage(params={"passes": ["depth"]}).params.passes == ("depth",)


def test_stage_pickles_without_worker(wb_stage):
    clone = pickle.loads(pickle.dumps(wb_stage))
    assert clone.worker is None and clone.params == wb_stage.params
