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
