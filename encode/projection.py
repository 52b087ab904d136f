"""Voxel-centre projection of DINOv2 patch tokens (DATA_FORMATS §3.3, §5, G12, G14).

Conventions, all from the spec:
- `transform_matrix` in transforms.json is camera-to-world in the Blender/OpenGL camera frame
  (+X right, +Y up, looks along -Z). OpenCV world-to-camera = inverse of c2w with columns 1 and 2
  of its 3x3 block negated.
- normalised intrinsics K = [[f, 0, .5], [0, f, .5], [0, 0, 1]], f = 0.5 / tan(fov / 2);
  uv = (K x_cam)[:2] / z lies in [0, 1] with (0, 0) at the top-left image corner.
- sampling: `grid_sample(tokens, 2 uv - 1)`, bilinear, align_corners=False, zero padding, so token
  (r, c) of an R x C map has its centre at uv = ((c + .5) / C, (r + .5) / R) and points outside
  the image get zeros, which count in the mean over views (no occlusion test).

Everything is torch so the same code runs on the GPU next to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

RESOLUTION = 64


def voxel_indices(points: np.ndarray, resolution: int = RESOLUTION) -> np.ndarray:
    """idx = floor((p + 0.5) * res) as uint8 (N, 3), in the ply's row order (G13, G14)."""
    idx = np.floor((np.asarray(points, dtype=np.float32) + 0.5) * resolution).astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= resolution):
        raise ValueError(f"voxel position outside the [-0.5, 0.5]^3 grid of {resolution}^3")
    if resolution > 256:
        raise ValueError("uint8 indices cap the resolution at 256 (G13)")
    return idx.astype(np.uint8)


def opencv_extrinsics(c2w: np.ndarray | Sequence) -> np.ndarray:
    """(..., 4, 4) world-to-camera in the OpenCV convention from Blender camera-to-world matrices."""
    m = np.array(c2w, dtype=np.float64)
    m[..., :3, 1:3] *= -1.0
    return np.linalg.inv(m)


def normalized_intrinsics(fov: float | np.ndarray) -> np.ndarray:
    """(..., 3, 3) normalised K from the (square) field of view in radians."""
    fov = np.asarray(fov, dtype=np.float64)
    f = 0.5 / np.tan(fov / 2.0)
    k = np.zeros(fov.shape + (3, 3))
    k[..., 0, 0] = f
    k[..., 1, 1] = f
    k[..., 0, 2] = 0.5
    k[..., 1, 2] = 0.5
    k[..., 2, 2] = 1.0
    return k


def cameras_from_transforms(transforms: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(file names, w2c (V, 4, 4), K (V, 3, 3)) of every frame of a transforms.json object."""
    frames = transforms["frames"]
    if not frames:
        raise ValueError("transforms.json lists no frames")
    names = [str(f["file_path"]) for f in frames]
    c2w = np.array([f["transform_matrix"] for f in frames], dtype=np.float64)
    if c2w.shape[1:] != (4, 4):
        raise ValueError(f"transform_matrix must be 4x4, got {c2w.shape[1:]}")
    fov = np.array([float(f["camera_angle_x"]) for f in frames])
    return names, opencv_extrinsics(c2w), normalized_intrinsics(fov)


def project_uv(points: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """uv (V, N, 2) of world points (N, 3) in V views; float32 like the reference."""
    p = points.to(torch.float32)
    w2c = w2c.to(device=p.device, dtype=torch.float32)
    K = K.to(device=p.device, dtype=torch.float32)
    cam = torch.einsum("vij,nj->vni", w2c[:, :3, :3], p) + w2c[:, None, :3, 3]
    pix = torch.einsum("vij,vnj->vni", K, cam)
    return pix[..., :2] / pix[..., 2:3]


def sample_tokens(tokens: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (V, C, N) of token maps (V, C, H, W) at uv (V, N, 2), spec conventions."""
    grid = (uv * 2.0 - 1.0).unsqueeze(1).to(tokens.dtype)  # (V, 1, N, 2), x = u (column), y = v (row)
    out = F.grid_sample(tokens, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, :, 0, :]


def sum_sampled(tokens: torch.Tensor, uv: torch.Tensor, max_elems: int = 1 << 28) -> torch.Tensor:
    """Sum over views of `sample_tokens`, in float32, chunked over views to bound memory: (C, N)."""
    tokens = tokens.to(torch.float32)
    v, c = tokens.shape[:2]
    n = uv.shape[1]
    acc = torch.zeros(c, n, dtype=torch.float32, device=tokens.device)
    step = max(1, min(v, max_elems // max(1, c * n)))
    for i in range(0, v, step):
        acc += sample_tokens(tokens[i:i + step], uv[i:i + step]).sum(0)
    return acc


def project_mean(tokens: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Mean over views of the sampled features: (N, C) float32 (cast to float16 by the caller)."""
    return (sum_sampled(tokens, uv) / tokens.shape[0]).T


def token_grid(image_size: int, patch_size: int) -> int:
    """Side of the patch grid (37 for 518 px and patch 14)."""
    if image_size % patch_size:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    return image_size // patch_size
