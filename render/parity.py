"""How close two renders of the same asset and cameras are: per view and per voxel.

Per view, inside the union of both alpha masks (alpha > 0.5), on the colours the feature stage
sees (RGB premultiplied onto black, [0, 1]):
- `alpha_iou`: IoU of the two alpha masks;
- `psnr`: 10 log10(1 / MSE) over the union pixels and the three channels;
- `ssim`: mean of the SSIM map (11x11 Gaussian window, sigma 1.5, on each channel) over the union;
- `mean_abs_diff` (8-bit units) and `mean_diff` per channel (signed: a colour or brightness bias).

Per voxel: each engine's views are projected onto the asset's 64^3 voxels exactly as the feature
stage projects DINOv2 patch tokens (`encode.projection`: transforms.json cameras, bilinear
`grid_sample`, zero padding, mean over views, no occlusion test), with the image averaged onto the
DINOv2 patch grid (37 x 37 for 518 px / patch 14) standing in for the tokens. The per-voxel means
are compared by cosine similarity and L2 distance (RGB, [0, 1]).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from encode.projection import cameras_from_transforms, project_uv, sum_sampled

PATCH_GRID = 37
"""DINOv2 ViT-L/14 at 518 px: the token grid the feature stage samples."""


def read_rgba(path_or_bytes: str | Path | bytes) -> np.ndarray:
    """uint8 (H, W, 4) RGBA of a PNG/WebP file or its bytes."""
    src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(src) as im:
        return np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()


def premultiplied(rgba_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., H, W, 4) uint8 -> (..., H, W, 3) float RGB * alpha in [0, 1] (the feature stage's input)."""
    x = torch.as_tensor(rgba_u8).to(torch.float32) / 255.0
    return x[..., :3] * x[..., 3:4]


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float32) - size // 2) ** 2) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(H, W) mean-over-channels SSIM of two (H, W, 3) images in [0, 1]."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    w = _gauss()
    pad = w.shape[-1] // 2

    def blur(t):
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), w, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s[0].mean(0)


def view_metrics(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Metrics of one view; `ref`, `test` uint8 (H, W, 4) of the same size."""
    if ref.shape != test.shape:
        raise ValueError(f"view sizes differ: {ref.shape} vs {test.shape}")
    ma, mb = ref[..., 3] > 127, test[..., 3] > 127
    union = ma | mb
    n = int(union.sum())
    inter = int((ma & mb).sum())
    a, b = premultiplied(ref), premultiplied(test)
    if n == 0:
        return {"alpha_iou": 1.0, "psnr": float("inf"), "ssim": 1.0, "mean_abs_diff": 0.0,
                "mean_diff_r": 0.0, "mean_diff_g": 0.0, "mean_diff_b": 0.0, "union_px": 0}
    u = torch.from_numpy(union)
    d = (b - a)[u]
    mse = float((d * d).mean())
    out = {
        "alpha_iou": inter / n,
        "psnr": 10.0 * np.log10(1.0 / max(mse, 1e-12)),
        "ssim": float(ssim_map(a, b)[u].mean()),
        "mean_abs_diff": float(d.abs().mean()) * 255.0,
        "union_px": n,
    }
    for c, name in enumerate("rgb"):
        out[f"mean_diff_{name}"] = float(d[:, c].mean()) * 255.0
    return out


def voxel_rgb(views: np.ndarray | torch.Tensor, transforms: dict, points: np.ndarray,
              grid: int = PATCH_GRID) -> np.ndarray:
    """(N, 3) per-voxel mean colour: views (V, H, W, 4) uint8 in transforms.json's frame order,
    averaged onto the patch grid and projected as the feature stage projects tokens."""
    _names, w2c, K = cameras_from_transforms(transforms)
    rgb = premultiplied(views).permute(0, 3, 1, 2)  # (V, 3, H, W)
    tokens = F.adaptive_avg_pool2d(rgb, grid)
    uv = project_uv(torch.from_numpy(np.asarray(points, np.float32)), torch.from_numpy(w2c), torch.from_numpy(K))
    return (sum_sampled(tokens, uv) / tokens.shape[0]).T.numpy()


def voxel_metrics(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Cosine similarity and L2 distance of per-voxel colour means (N, 3)."""
    a, b = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 1e-6) & (nb > 1e-6)
    cos = np.sum(a[ok] * b[ok], axis=1) / (na[ok] * nb[ok])
    l2 = np.linalg.norm(a - b, axis=1)
    return {"voxel_cosine": float(cos.mean()) if ok.any() else 1.0, "voxel_l2": float(l2.mean()),
            "voxel_l2_p95": float(np.quantile(l2, 0.95)), "voxel_mean_diff": float((b - a).mean()),
            "n_voxels": int(len(a))}


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over views (min for alpha IoU as well, the goal is per view)."""
    keys = [k for k in rows[0] if k != "union_px"]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out["alpha_iou_min"] = float(min(r["alpha_iou"] for r in rows))
    return out
