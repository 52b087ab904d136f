"""Surface voxelization exactly as the toolkit does it (DATA_FORMATS §4), and its stage.

open3d `VoxelGrid.create_from_triangle_mesh_within_bounds` at 64^3 in [-0.5, 0.5]^3 on the
normalized mesh with vertices clamped inside the box; output voxel centres in open3d's iteration
order (never re-sorted: features and latents inherit this row order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalogs import layout
from catalogs.stage import AssetTask, CorruptFile, EmptyGeometry, Resources, Stage, StageContext, StageResult
from encode.plyio import points_ply_bytes

CLAMP_EPS = 1e-6


def voxelize_mesh(mesh, resolution: int = 64) -> np.ndarray:
    """Occupied grid indices (N, 3) int, in open3d's order, of an open3d TriangleMesh (clamped copy)."""
    import open3d as o3d

    clamped = o3d.geometry.TriangleMesh(mesh)
    v = np.clip(np.asarray(clamped.vertices), -0.5 + CLAMP_EPS, 0.5 - CLAMP_EPS)
    clamped.vertices = o3d.utility.Vector3dVector(v)
    grid = o3d.geometry.VoxelGrid.create_from_triangle_mesh_within_bounds(
        clamped, voxel_size=1.0 / resolution, min_bound=(-0.5, -0.5, -0.5), max_bound=(0.5, 0.5, 0.5))
    idx = np.array([vx.grid_index for vx in grid.get_voxels()], dtype=np.int64).reshape(-1, 3)
    if idx.size and (idx.min() < 0 or idx.max() >= resolution):
        raise AssertionError(f"voxel index outside [0, {resolution - 1}]")
    return idx


def voxel_centres(indices: np.ndarray, resolution: int = 64) -> np.ndarray:
    """p = (idx + 0.5) / res - 0.5 (never idx / res - 0.5: G14)."""
    return ((indices.astype(np.float64) + 0.5) / resolution - 0.5).astype(np.float32)


def read_triangle_mesh(path: str | Path):
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        if len(mesh.vertices) == 0:
            raise CorruptFile(f"open3d read no geometry from {Path(path).name}")
        raise EmptyGeometry("mesh has vertices but no triangles")
    return mesh


class VoxelizeStage(Stage):
    """Params: `resolution` (64 in TRELLIS), `input` (the stage whose mesh.ply to read)."""

    name = "voxelize"
    upstream = ("normalize",)
    isolated = True
    resources = Resources(num_cpus=0.5)
    timeout_s = 300.0

    @dataclass(frozen=True)
    class Params:
        resolution: int = 64
        input: str = "normalize"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if kwargs.get("upstream") is None:
            self.upstream = (self.params.input,)

    def mesh_uri(self, task: AssetTask) -> str:
        ref = task.input(self.params.input)
        return ref.uri if self.params.input != "render" else ref.uri.rstrip("/") + "/mesh.ply"

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        res = self.params.resolution
        with ctx.store.local_copy(ctx.store.rel(self.mesh_uri(task))) as path:
            idx = voxelize_mesh(read_triangle_mesh(path), res)
        if len(idx) == 0:
            raise EmptyGeometry("no voxel is occupied")
        rel = layout.voxels(task.sha256)
        n = ctx.store.write_bytes(rel, points_ply_bytes(voxel_centres(idx, res)))
        return StageResult(uri=ctx.store.uri(rel), bytes=n, metrics={"num_voxels": int(len(idx)), "resolution": res})
