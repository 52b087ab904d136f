"""The one normalization rule (DATA_FORMATS.md §3.1 step 3), and the trimesh path that applies it.

Scale by s = 1/max(extent) about the origin, then translate by t = -(min+max)/2 of the scaled box,
so the asset's box is centred at the origin with its longest side 1 ([-0.5, 0.5]^3). Blender's
render stage and the trimesh stage both call `normalization_transform`.
"""

from __future__ import annotations

import numpy as np


def normalization_transform(bbox_min, bbox_max) -> tuple[float, np.ndarray]:
    """(scale, offset) mapping p to s*p + t, for the box [bbox_min, bbox_max]."""
    lo = np.asarray(bbox_min, dtype=np.float64)
    hi = np.asarray(bbox_max, dtype=np.float64)
    extent = float(np.max(hi - lo))
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError(f"degenerate bounding box {lo.tolist()}..{hi.tolist()}")
    s = 1.0 / extent
    t = -(lo * s + hi * s) / 2.0
    return s, t


def scene_bounds(scene) -> tuple[np.ndarray, np.ndarray]:
    """The box of DATA_FORMATS §3.1: each mesh's local bounding-box corners in world space.

    Like Blender's `bound_box`, this can be looser than the tight vertex box when a mesh is rotated.
    """
    import trimesh

    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.vertices) == 0:
            continue
        corners = trimesh.transform_points(trimesh.bounds.corners(geom.bounds), transform)
        lo, hi = np.minimum(lo, corners.min(axis=0)), np.maximum(hi, corners.max(axis=0))
    return lo, hi
