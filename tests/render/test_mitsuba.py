"""The GPU render tier on its CPU backend (Mitsuba llvm_ad_rgb) at tiny settings: canonical form,
engine MITSUBA behind the render stage contract, and agreement with Cycles on the same cameras."""

import json

import numpy as np
import pytest
import trimesh
from PIL import Image

from catalogs.stage import ArtifactRef, AssetTask, CorruptFile, MissingUpstream, StageContext, classify
from catalogs.store import Store
from conftest import iou, rasterize, read_ply, sha_of
from render import parity
from render.canonical import FILES, CanonicalStage
from render.stages import RenderStage

pytest.importorskip("mitsuba")

TINY = {"resolution": 64, "num_views": 4}
MI = {"engine": "MITSUBA", "device": "CPU", "samples": 16, "denoise": False, **TINY}


@pytest.fixture(scope="module")
def canon_stage():
    st = CanonicalStage(config={"threads": 2, "timeout_s": 300})
    st.setup()
    yield st
    st.close()


@pytest.fixture(scope="module")
def mi_stage():
    st = RenderStage(params=MI)
    yield st
    st.close()


def _canonical(canon_stage, path, fmt, out):
    out.mkdir(parents=True, exist_ok=True)
    m = canon_stage.canonicalize(str(path), fmt, str(out))
    return {name: out / name for name in FILES}, m


def _views(d, n):
    return np.stack([np.array(Image.open(d / f"{i:03d}.png").convert("RGBA")) for i in range(n)])


def test_params_fingerprint_and_placement():
    cycles, mitsuba = RenderStage(params=TINY), RenderStage(params=MI)
    assert cycles.fingerprint({"ingest": "x"}) != mitsuba.fingerprint({"canonical": "x"})
    assert mitsuba.upstream == ("canonical",) and cycles.upstream == ("ingest",)
    assert mitsuba.resources.num_gpus == 0  # CPU backend: no GPU asked for
    gpu = RenderStage(params={**MI, "device": "CUDA"})
    assert gpu.resources.num_gpus == 0.25
    assert RenderStage(params={**MI, "device": "CUDA"}, config={"num_gpus": 1}).resources.num_gpus == 1.0
    # same asset, same num_views: the same cameras whatever the engine or quality (render v2)
    sha = "ab" * 32
    assert cycles.seed(sha) == mitsuba.seed(sha) == RenderStage(params={**TINY, "samples": 4}).seed(sha)
    with pytest.raises(ValueError, match="OptiX"):
        RenderStage(params={**MI, "denoise": True})
    with pytest.raises(ValueError, match="device"):
        RenderStage(params={**MI, "device": "METAL"})


def test_silhouette_matches_mesh_projection(canon_stage, mi_stage, fx, tmp_path):
    files, m = _canonical(canon_stage, fx["asym"], "glb", tmp_path / "canon")
    assert m["n_uncarried_materials"] == 0 and m["scale"] > 0
    out = tmp_path / "r"
    metrics = mi_stage.render_canonical(files, sha_of(fx["asym"]), str(out))
    tj = json.loads((out / "transforms.json").read_text())
    verts, faces = read_ply(out / "mesh.ply")
    views = _views(out, 4)
    for i, f in enumerate(tj["frames"]):
        sil = rasterize(verts, faces, np.array(f["transform_matrix"]), f["camera_angle_x"], 64)
        assert iou(views[i][..., 3] > 127, sil) > 0.93, f"view {i}"
    assert metrics["n_views"] == 4 and metrics["render_s"] > 0 and metrics["n_engine_dropped"] == 0


def test_transforms_equal_cycles_and_colours_agree(canon_stage, mi_stage, fx, tmp_path):
    """Textured glTF and vertex colours: same transforms.json (but settings) and close colours."""
    vc = trimesh.creation.icosphere(subdivisions=3)
    vc.visual = trimesh.visual.ColorVisuals(vc, vertex_colors=np.tile([40, 200, 60, 255], (len(vc.vertices), 1)))
    vc_path = tmp_path / "vc.glb"
    vc.export(vc_path)
    cycles = RenderStage(params={**TINY, "samples": 32}, config={"threads": 2})
    try:
        for path in (fx["textured_glb"], vc_path):
            sha = sha_of(path)
            files, _ = _canonical(canon_stage, path, "glb", tmp_path / f"c-{sha[:8]}")
            mi_stage.render_canonical(files, sha, str(tmp_path / f"m-{sha[:8]}"))
            cycles.render_to(str(path), "glb", sha, str(tmp_path / f"y-{sha[:8]}"))
            tm = json.loads((tmp_path / f"m-{sha[:8]}" / "transforms.json").read_text())
            tc = json.loads((tmp_path / f"y-{sha[:8]}" / "transforms.json").read_text())
            assert {k: v for k, v in tm.items() if k != "trellis_data"} == \
                {k: v for k, v in tc.items() if k != "trellis_data"}
            assert tm["trellis_data"]["seed"] == tc["trellis_data"]["seed"]
            a, b = _views(tmp_path / f"y-{sha[:8]}", 4), _views(tmp_path / f"m-{sha[:8]}", 4)
            rows = [parity.view_metrics(a[i], b[i]) for i in range(4)]
            s = parity.summarize(rows)
            assert s["alpha_iou_min"] > 0.9
            for c in "rgb":
                assert abs(s[f"mean_diff_{c}"]) < 10.0, (path.name, s)  # 8-bit units, at 16-32 spp
            mean = parity.premultiplied(b)[torch_mask(b)].mean(0)
            if path == vc_path:
                assert mean[1] > mean[0] + 0.1 and mean[1] > mean[2] + 0.1  # the green of the vertex colours (Filmic desaturates)
            else:
                assert mean[0] > mean[2]  # the texture's red dominates its green checker
    finally:
        cycles.close()


def torch_mask(views):
    import torch

    return torch.from_numpy(views[..., 3] > 127)


def test_transparency_alpha(canon_stage, mi_stage, tmp_path):
    """An alpha-blended plate: coverage alpha ~ its alpha (stochastic), not 1 like a plain hit."""
    plate = trimesh.creation.box(extents=[1.0, 1.0, 0.01])
    plate.visual = trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(
        baseColorFactor=[0.9, 0.9, 0.9, 0.4], alphaMode="BLEND", metallicFactor=0.0, roughnessFactor=0.5))
    path = tmp_path / "plate.glb"
    plate.export(path)
    files, _ = _canonical(canon_stage, path, "glb", tmp_path / "c")
    st = RenderStage(params={**MI, "samples": 64})
    try:
        st.render_canonical(files, sha_of(path), str(tmp_path / "m"))
    finally:
        st.close()
    alpha = _views(tmp_path / "m", 4)[..., 3].astype(float) / 255
    inside = alpha[alpha > 0.05]
    # two faces 1 cm apart: 1 - (1 - 0.4)^2 = 0.64 where both are crossed, 0.4 at the rim
    assert 0.3 < np.median(inside) < 0.75


def test_stage_run_publishes_same_layout(canon_stage, mi_stage, fx, tmp_path):
    store = Store(str(tmp_path / "root"))
    ctx = StageContext(store, run_id="t")
    sha = sha_of(fx["obj_zip"])
    store.put_file(fx["obj_zip"], f"raw/test/{sha}.zip")
    task = AssetTask(sha, {"format": "zip"}, {"ingest": ArtifactRef(store.uri(f"raw/test/{sha}.zip"))})
    res = canon_stage.run(task, ctx)
    assert sorted(n.split("/")[-1] for n in store.listdir(f"canonical/{sha}")) == sorted(FILES)
    assert res.metrics["format"] == "obj" and res.metrics["n_textures"] == 1
    rtask = AssetTask(sha, {"format": "zip"}, {"canonical": ArtifactRef(res.uri, res.metrics)})
    out = mi_stage.run(rtask, ctx)
    names = sorted(n.split("/")[-1] for n in store.listdir(f"renders/{sha}"))
    assert names == ["000.png", "001.png", "002.png", "003.png", "mesh.ply", "transforms.json"]
    assert out.metrics["format"] == "obj" and out.metrics["settings"]["engine"] == "MITSUBA"
    json.dumps(dict(out.metrics))


def test_typed_failures(canon_stage, mi_stage, fx, tmp_path):
    with pytest.raises(CorruptFile):
        canon_stage.canonicalize(str(fx["corrupt"]), "glb", str(tmp_path / "c"))
    files, _ = _canonical(canon_stage, fx["box"], "glb", tmp_path / "ok")
    bad = tmp_path / "bad.glb"
    bad.write_bytes(b"glTF" + b"\x02\x00\x00\x00" + b"\xff" * 40)
    with pytest.raises(CorruptFile) as ei:
        mi_stage.render_canonical({**files, "model.glb": bad}, "0" * 64, str(tmp_path / "r"))
    assert classify(ei.value) == ("corrupt_file", False)
    with pytest.raises(MissingUpstream):
        mi_stage.run(AssetTask("0" * 64, {}, {}), StageContext(Store(str(tmp_path / "s"))))
