"""Shared fixtures of the render tests: test assets and one warm Workbench stage for the session."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import render_fixtures
from render import cameras


@pytest.fixture(scope="session")
def fx(tmp_path_factory) -> dict[str, Path]:
    return render_fixtures.make_all(tmp_path_factory.mktemp("render-fixtures"))


def sha_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def wb_stage():
    """Feature-render stage on Workbench at 64 px, 4 views: the cheap, warm default of the tests."""
    from render.stages import RenderStage

    stage = RenderStage(params={"engine": "BLENDER_WORKBENCH", "resolution": 64, "num_views": 4},
                        config={"threads": 2, "timeout_s": 120})
    stage.setup()
    yield stage
    stage.close()


def read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d

    m = o3d.io.read_triangle_mesh(str(path))
    return np.asarray(m.vertices), np.asarray(m.triangles)


def rasterize(verts: np.ndarray, faces: np.ndarray, c2w: np.ndarray, fov: float, res: int) -> np.ndarray:
    """Filled silhouette: pixels whose centre lies inside a projected triangle (OpenCV convention)."""
    uv, z = cameras.project(verts, c2w, fov)
    assert np.all(z > 0), "mesh behind the camera"
    px = uv * res
    mask = np.zeros((res, res), bool)
    for tri in px[faces]:
        lo = np.floor(tri.min(0) - 0.5).astype(int).clip(0, res - 1)
        hi = np.ceil(tri.max(0) - 0.5).astype(int).clip(0, res - 1)
        if (hi < lo).any():
            continue
        xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1) + 0.5, np.arange(lo[1], hi[1] + 1) + 0.5)
        p = np.stack([xs.ravel(), ys.ravel()], 1)
        a, b, c = tri

        def edge(p0, p1):
            return (p1[0] - p0[0]) * (p[:, 1] - p0[1]) - (p1[1] - p0[1]) * (p[:, 0] - p0[0])

        w = np.stack([edge(a, b), edge(b, c), edge(c, a)], 1)
        inside = np.all(w >= 0, 1) | np.all(w <= 0, 1)
        yy = (p[inside, 1] - 0.5).astype(int)
        xx = (p[inside, 0] - 0.5).astype(int)
        mask[yy, xx] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
