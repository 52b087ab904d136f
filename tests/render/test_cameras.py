"""The camera sequences and transforms.json, without Blender (DATA_FORMATS.md §3.2, §3.3)."""

import json
import math

import numpy as np
import pytest

from render import cameras

VECTOR = {0: (1.570796, -1.407315), 1: (4.712389, -1.287002), 37: (5.595962, 0.0),
          75: (6.724972, 0.344555), 149: (5.718680, 1.476480)}


def test_reference_test_vector():
    yaw, pitch = cameras.hammersley_yaw_pitch(150, 0.5, 0.25)
    for i, (y, p) in VECTOR.items():
        assert yaw[i] == pytest.approx(y, abs=5e-7)
        assert pitch[i] == pytest.approx(p, abs=5e-7)


def test_hemisphere_split_and_monotone_pitch():
    _, pitch = cameras.hammersley_yaw_pitch(150, 0.5, 0.25)
    assert np.all(np.diff(pitch) > 0)
    assert (pitch < 0).sum() == 37  # views 0-36 below the equator; 37 is on it for o1 = 0.5
    _, pitch = cameras.hammersley_yaw_pitch(150, 0.3, 0.0)
    assert (pitch < 0).sum() == 38  # and view 37 too when o1 < 0.5


def test_radical_inverse():
    assert [cameras.radical_inverse_base2(i) for i in range(5)] == [0.0, 0.5, 0.25, 0.75, 0.125]


def test_c2w_example_yaw0_pitch0():
    m = cameras.c2w_look_at_origin(cameras.camera_position(0.0, 0.0, 2.0))
    assert np.allclose(m, [[0, 0, 1, 2], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], atol=1e-12)


def test_first_views_match_formula():
    plan = cameras.feature_plan(150, offsets=(0.5, 0.25))
    for i, (y, p) in VECTOR.items():
        pos = 2.0 * np.array([math.cos(y) * math.cos(p), math.sin(y) * math.cos(p), math.sin(p)])
        assert np.allclose(plan.views[i].c2w[:3, 3], pos, atol=2e-6)
        z = plan.views[i].c2w[:3, 2]
        assert np.allclose(z, pos / 2.0, atol=2e-6)  # camera looks at the origin along -Z
        assert np.allclose(plan.views[i].c2w[:3, :3].T @ plan.views[i].c2w[:3, :3], np.eye(3), atol=1e-12)
        assert plan.views[i].fov == pytest.approx(0.6981317007977318)


def test_origin_projects_to_image_centre():
    plan = cameras.feature_plan(8, seed=3)
    for v in plan.views:
        uv, z = cameras.project(np.zeros((1, 3)), v.c2w, v.fov)
        assert np.allclose(uv, 0.5) and z[0] == pytest.approx(2.0)
    # world +Z (up) lands in the upper half of the image for a view on the equator
    v = cameras.feature_plan(1, offsets=(0.5, 0.0)).views[0]
    uv, _ = cameras.project(np.array([[0.0, 0.0, 0.3]]), cameras.c2w_look_at_origin([2, 0, 0]), v.fov)
    assert uv[0, 1] < 0.5
    assert cameras.normalized_intrinsics(v.fov)[0, 0] == pytest.approx(1.3737387, abs=1e-6)


def test_seeded_offsets_are_reproducible_and_recorded():
    s1 = cameras.asset_seed("a" * 64, "render", {"samples": 128})
    assert s1 == cameras.asset_seed("a" * 64, "render", {"samples": 128})
    assert s1 != cameras.asset_seed("b" * 64, "render", {"samples": 128})
    assert s1 != cameras.asset_seed("a" * 64, "render_cond", {"samples": 128})
    p1, p2 = cameras.feature_plan(10, seed=s1), cameras.feature_plan(10, seed=s1)
    assert p1.draws == p2.draws and 0 <= p1.draws["offsets"][0] < 1
    assert all(np.array_equal(a.c2w, b.c2w) for a, b in zip(p1.views, p2.views))


def test_cond_rule():
    r_min, r_max = cameras.cond_radius_bounds()
    assert r_min == pytest.approx(1.509869, abs=1e-6) and r_max == pytest.approx(9.936527, abs=1e-6)
    plan = cameras.cond_plan(5000, seed=1)
    r = np.array([v.radius for v in plan.views])
    fov = np.array([v.fov for v in plan.views])
    assert r.min() >= r_min - 1e-9 and r.max() <= r_max + 1e-9
    assert fov.min() >= math.radians(10) - 1e-9 and fov.max() <= math.radians(70) + 1e-9
    k = 1 / r**2  # uniform in k
    assert abs(k.mean() - (1 / r_min**2 + 1 / r_max**2) / 2) < 0.01
    # the bounding sphere of the unit cube exactly fills the FOV
    assert np.allclose(np.sin(fov / 2) * r, math.sqrt(3) / 2)
    assert np.allclose([np.linalg.norm(v.position) for v in plan.views], r)


def test_transforms_json_schema(tmp_path):
    plan = cameras.feature_plan(3, offsets=(0.5, 0.25))
    frames = [(cameras.view_name(i), v.fov, np.round(v.c2w)) for i, v in enumerate(plan.views)]
    data = cameras.transforms_dict(frames, 0.5, [0, 0, 0], {"seed": 1, "offsets": [0.5, 0.25]})
    path = tmp_path / "transforms.json"
    cameras.write_transforms(path, data)
    text = path.read_text()
    assert text.startswith('{\n    "aabb"')  # indent 4
    back = json.loads(text)
    assert back["aabb"] == [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]
    for f in back["frames"]:
        assert all(isinstance(x, float) for row in f["transform_matrix"] for x in row)  # never ints
        assert f["transform_matrix"][3] == [0.0, 0.0, 0.0, 1.0]
    assert isinstance(back["offset"][0], float) and back["trellis_data"]["offsets"] == [0.5, 0.25]
    assert [f["file_path"] for f in back["frames"]] == ["000.png", "001.png", "002.png"]
    assert cameras.view_name(1000) == "1000.png"
