"""Surface extraction from the mesh decoder's per-cube features -- an APPROXIMATION.

The reference runs FlexiCubes on the 8 sdf / 24 deform / 21 weight (+48 colour) channels per
256³ cube (MODELS.md 3.7). This module follows the reference's preparation (sdf shift of
-1/res, averaging corner values over the cubes sharing a grid vertex, +1 outside) but then runs
plain marching cubes (scikit-image, imported lazily) on the vertex sdf grid, ignoring the
FlexiCubes weights and the vertex deformation. Vertices and faces therefore differ from the
reference mesh in detail; use it for previews and tests, not for parity.
"""
from __future__ import annotations

from typing import List

import torch

from ..sparse.tensor import SparseTensor
from .representations import MeshExtractResult

__all__ = ["extract_meshes", "corner_grid"]

# corner order (x fastest): (0,0,0), (1,0,0), (0,1,0), (1,1,0), (0,0,1), (1,0,1), (0,1,1), (1,1,1)
_CORNERS = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])


def corner_grid(coords: torch.Tensor, values: torch.Tensor, res: int, fill: float) -> torch.Tensor:
    """Average per-cube corner values ``values [N, 8, C]`` into a dense ``(res+1)^3 x C`` vertex grid."""
    n, _, c = values.shape
    verts = (coords[:, None, :].long() + _CORNERS.to(coords.device)[None]).reshape(-1, 3)
    idx = (verts[:, 0] * (res + 1) + verts[:, 1]) * (res + 1) + verts[:, 2]
    total = (res + 1) ** 3
    acc = torch.zeros(total, c, dtype=values.dtype, device=values.device)
    cnt = torch.zeros(total, dtype=values.dtype, device=values.device)
    acc.index_add_(0, idx, values.reshape(-1, c))
    cnt.index_add_(0, idx, torch.ones_like(idx, dtype=values.dtype))
    grid = torch.full((total, c), fill, dtype=values.dtype, device=values.device)
    hit = cnt > 0
    grid[hit] = acc[hit] / cnt[hit, None]
    return grid.reshape(res + 1, res + 1, res + 1, c)


def extract_meshes(x: SparseTensor, resolution: int = 256, use_color: bool = True) -> List[MeshExtractResult]:
    try:
        from skimage.measure import marching_cubes
    except ImportError as e:  # optional dependency
        raise ImportError("mesh extraction (marching-cubes approximation of FlexiCubes) needs scikit-image; "
                          "use SLatMeshDecoder.decode_features() for the raw features") from e
    out = []
    for s in x.layout:
        feats = x.feats[s].float()
        coords = x.coords[s][:, 1:]
        sdf = feats[:, :8].reshape(-1, 8, 1) - 1.0 / resolution
        grid = corner_grid(coords, sdf, resolution, 1.0)[..., 0].cpu().numpy()
        try:
            v, f, _, _ = marching_cubes(grid, level=0.0)
        except (ValueError, RuntimeError):
            out.append(MeshExtractResult(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), success=False))
            continue
        verts = torch.from_numpy(v.copy()).float() / resolution - 0.5
        faces = torch.from_numpy(f.copy()).long()
        attrs = None
        if use_color:
            col = torch.sigmoid(feats[:, 53:101].reshape(-1, 8, 6))
            cgrid = corner_grid(coords, col, resolution, 0.0)
            vi = torch.from_numpy(v).round().long().clamp(0, resolution)
            attrs = cgrid[vi[:, 0], vi[:, 1], vi[:, 2]].cpu()
        out.append(MeshExtractResult(verts, faces, attrs, success=faces.shape[0] > 0))
    return out
