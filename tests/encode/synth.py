"""Synthetic upstream artifacts for the encode tests: renders (PNGs + transforms.json with the
feature-render cameras of render/cameras.py) and voxels, written straight into a store."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
from PIL import Image

from catalogs import layout
from catalogs.stage import ArtifactRef, AssetTask
from catalogs.store import Store
from encode.plyio import points_ply_bytes
from encode.voxelize import voxel_centres
from render import cameras


def sha(i: int | str) -> str:
    return hashlib.sha256(f"synthetic-{i}".encode()).hexdigest()


def shell_indices(radius: float = 0.3, res: int = 64, seed: int = 0) -> np.ndarray:
    """Voxel indices of a sphere shell, in a shuffled (non-sorted) order like open3d's."""
    g = (np.indices((res, res, res)).reshape(3, -1).T + 0.5) / res - 0.5
    r = np.linalg.norm(g, axis=1)
    idx = np.indices((res, res, res)).reshape(3, -1).T[np.abs(r - radius) < 0.5 / res]
    return idx[np.random.default_rng(seed).permutation(len(idx))]


def image(i: int, size: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed * 1000 + i)
    rgba = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((size, size)) < 0.3, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def write_asset(store: Store, sha256: str, n_views: int = 4, size: int = 64, radius: float = 0.3, seed: int = 0,
                indices: np.ndarray | None = None) -> AssetTask:
    plan = cameras.feature_plan(n_views, seed=seed)
    rdir = layout.renders(sha256)
    for i in range(n_views):
        store.write_bytes(f"{rdir}/{cameras.view_name(i)}", image(i, size, seed))
    tj = cameras.transforms_dict([(cameras.view_name(i), v.fov, v.c2w) for i, v in enumerate(plan.views)], 1.0, [0, 0, 0])
    store.write_bytes(f"{rdir}/transforms.json", json.dumps(tj, indent=4).encode())
    idx = shell_indices(radius, seed=seed) if indices is None else indices
    store.write_bytes(layout.voxels(sha256), points_ply_bytes(voxel_centres(idx)))
    return task(store, sha256, num_voxels=len(idx))


def task(store: Store, sha256: str, **metrics) -> AssetTask:
    return AssetTask(sha256, {"sha256": sha256}, {
        "render": ArtifactRef(store.uri(layout.renders(sha256))),
        "voxelize": ArtifactRef(store.uri(layout.voxels(sha256)), metrics),
    })


def with_input(t: AssetTask, stage: str, uri: str) -> AssetTask:
    return AssetTask(t.sha256, t.asset, {**t.inputs, stage: ArtifactRef(uri)})
