"""Voxelization follows the toolkit's rule: identical to open3d's own call on the same mesh."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import trimesh

from curation.sources.sample import SAMPLES, build_sample
from encode.mesh import load_scene, mesh_ply_bytes, normalized_mesh
from encode.plyio import read_points_ply, points_ply_bytes
from encode.voxelize import read_triangle_mesh, voxel_centres, voxelize_mesh


def normalized_ply(tmp_path, name: str):
    fmt = SAMPLES[name][0]
    raw = tmp_path / f"{name}.{fmt}"
    raw.write_bytes(build_sample(name))
    v, f, s, t = normalized_mesh(load_scene(raw, fmt))
    path = tmp_path / f"{name}.ply"
    path.write_bytes(mesh_ply_bytes(v, f))
    return path, v


def test_normalized_mesh_fills_the_unit_box(tmp_path):
    for name in ("offset_box", "torus", "table"):
        _, v = normalized_ply(tmp_path, name)
        lo, hi = v.min(axis=0), v.max(axis=0)
        assert np.isclose((hi - lo).max(), 1.0, atol=1e-6)
        assert np.allclose((hi + lo) / 2, 0, atol=1e-6)


def test_voxels_match_open3d_directly(tmp_path):
    for name in ("torus", "chair", "twisted_box"):
        path, _ = normalized_ply(tmp_path, name)
        ours = voxelize_mesh(read_triangle_mesh(path), 64)
        mesh = o3d.io.read_triangle_mesh(str(path))
        mesh.vertices = o3d.utility.Vector3dVector(np.clip(np.asarray(mesh.vertices), -0.5 + 1e-6, 0.5 - 1e-6))
        grid = o3d.geometry.VoxelGrid.create_from_triangle_mesh_within_bounds(
            mesh, voxel_size=1 / 64, min_bound=(-0.5,) * 3, max_bound=(0.5,) * 3)
        theirs = np.array([v.grid_index for v in grid.get_voxels()])
        assert {tuple(r) for r in ours} == {tuple(r) for r in theirs} and len(ours) == len(theirs)
        assert ours.min() >= 0 and ours.max() <= 63


def test_voxel_ply_is_exactly_the_reference_layout(tmp_path):
    idx = np.array([[0, 0, 0], [63, 1, 2], [10, 20, 30]])
    data = points_ply_bytes(voxel_centres(idx))
    header = (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
              b"property float z\nend_header\n")
    assert data.startswith(header) and len(data) == len(header) + 36
    pts = read_points_ply(data)
    assert np.array_equal(np.floor((pts + 0.5) * 64).astype(int), idx)  # G14: floor, never round
    assert np.allclose(pts[0], -0.5 + 0.5 / 64)
    assert np.asarray(o3d.io.read_point_cloud(str((tmp_path / "v.ply").write_bytes(data) and tmp_path / "v.ply")).points).shape == (3, 3)


def test_trimesh_reads_the_normalized_mesh(tmp_path):
    path, v = normalized_ply(tmp_path, "snowman")
    m = trimesh.load(path, process=False)
    assert m.faces.shape[1] == 3 and np.allclose(m.vertices, v.astype(np.float32))
