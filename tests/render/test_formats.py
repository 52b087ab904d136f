"""Every supported format imports and renders; signals flag textureless and missing textures."""

import json

import numpy as np
import pytest
from PIL import Image

import render_fixtures
from conftest import read_ply, sha_of

FORMATS = ["glb", "gltf", "obj", "fbx", "ply", "stl", "blend", "usd", "usda", "usdz", "abc", "dae"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_renders(wb_stage, fx, fmt, tmp_path):
    path = fx[fmt]
    m = wb_stage.render_to(str(path), fmt, sha_of(path), str(tmp_path))
    assert m["n_views"] == 4 and m["n_faces"] > 0
    for i in range(4):
        alpha = np.array(Image.open(tmp_path / f"{i:03d}.png"))[..., 3]
        assert (alpha > 127).sum() > 100, f"view {i} of .{fmt} is empty"
    verts, faces = read_ply(tmp_path / "mesh.ply")
    ext = verts.max(0) - verts.min(0)
    assert len(faces) > 0 and ext.max() == pytest.approx(1.0, abs=1e-4)
    assert np.all(np.abs(verts) <= 0.5 + 1e-4)
    if fmt != "obj":  # the asymmetric shape: its three extents survive every importer (up to axis order)
        want = render_fixtures.shapes()["asym"].extents
        assert sorted(ext / ext.max()) == pytest.approx(sorted(want / want.max()), abs=2e-3)
    tj = json.loads((tmp_path / "transforms.json").read_text())
    assert len(tj["frames"]) == 4


def test_blend_hidden_objects_dropped(wb_stage, fx, tmp_path):
    """The .blend fixture has a hidden cube at (30,30,30): it must not enter the box or mesh.ply."""
    m = wb_stage.render_to(str(fx["blend"]), "blend", sha_of(fx["blend"]), str(tmp_path))
    assert m["n_meshes"] == 1


def test_zip_bundle_picks_main_file(tmp_path, fx):
    from render.stages import pick_main_file, safe_extract

    names = safe_extract(fx["obj_zip"], tmp_path)
    assert pick_main_file(names, tmp_path) == "bundle/tex.obj"


def test_unsafe_zip_rejected(tmp_path):
    import zipfile

    from catalogs.stage import BadInput
    from render.stages import safe_extract

    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../escape.txt", "x")
    with pytest.raises(BadInput):
        safe_extract(z, tmp_path / "out")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_signals_textureless(wb_stage, fx, tmp_path):
    m = wb_stage.render_to(str(fx["sphere"]), "glb", sha_of(fx["sphere"]), str(tmp_path))
    assert m["textureless"] is True and m["n_textures"] == 0
    assert m["n_meshes"] == 1 and m["n_faces"] == 1280 and m["n_vertices"] > 600
    assert m["no_material_fraction"] == pytest.approx(1.0)  # trimesh writes no material


def test_signals_textured(wb_stage, fx, tmp_path):
    for key, fmt in (("obj", "obj"), ("textured_glb", "glb")):
        m = wb_stage.render_to(str(fx[key]), fmt, sha_of(fx[key]), str(tmp_path / key))
        assert m["textureless"] is False and m["n_textures"] == 1 and m["n_materials"] == 1
        assert m["any_missing_texture"] is False and m["no_material_fraction"] == pytest.approx(0.0)


def test_signals_missing_texture(wb_stage, fx, tmp_path):
    path = fx["obj_missing_tex"]
    m = wb_stage.render_to(str(path), "obj", sha_of(path), str(tmp_path))
    assert m["any_missing_texture"] is True and m["n_missing_textures"] == 1
    assert m["textureless"] is True  # the only texture it has cannot be read
    assert m["blender_log_warnings"] >= 1  # the importer's "Cannot load image" is counted


def test_nothing_leaks_between_assets(wb_stage, fx, tmp_path):
    """Factory reset between assets: a textured asset leaves no objects, materials or images behind."""
    wb_stage.render_to(str(fx["textured_glb"]), "glb", sha_of(fx["textured_glb"]), str(tmp_path / "a"))
    m = wb_stage.render_to(str(fx["sphere"]), "glb", sha_of(fx["sphere"]), str(tmp_path / "b"))
    assert m["n_objects"] == 1 and m["n_materials"] == 0 and m["n_textures"] == 0
    assert m["blender_log_warnings"] == 0


def test_passes(fx, tmp_path):
    from render.stages import RenderStage

    st = RenderStage(params={"resolution": 32, "num_views": 2, "samples": 2, "denoise": False,
                             "passes": ["depth", "normal", "albedo"]}, config={"threads": 2, "timeout_s": 120})
    try:
        st.render_to(str(fx["textured_glb"]), "glb", sha_of(fx["textured_glb"]), str(tmp_path))
    finally:
        st.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    for i in range(2):
        for p in ("depth", "normal", "albedo"):
            assert f"{i:03d}_{p}.exr" in names
        assert f"{i:03d}.png" in names
    assert np.array(Image.open(tmp_path / "000.png"))[..., 3].max() == 255  # colour output unaffected
