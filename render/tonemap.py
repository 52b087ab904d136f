"""Scene-linear RGB -> display RGB as Blender's Filmic view writes it, from the measured 3D LUT.

The LUT (`render/data/filmic_lut.npz`, made by `python -m render.calibration`) holds Blender's own
Filmic output at a 33^3 lattice of scene-linear colours on a log2 shaper; `apply_lut` interpolates
it trilinearly in shaper space. The GPU engine calls it on the rendered batch where it lies (torch
on the GPU), so the view transform costs one `grid_sample`, not a trip through the CPU.

Alpha follows Blender's handling of transparent film: the renderer's colour is premultiplied; the
view transform applies to the un-premultiplied colour, and PNGs store straight alpha.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from render import calibration


def srgb_oetf(x: np.ndarray) -> np.ndarray:
    """The sRGB encoding of linear values in [0, 1] (Blender's "Standard" view)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(np.maximum(x, 0.0031308), 1 / 2.4) - 0.055)


def _shaper(x: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """Scene-linear -> lattice coordinate in [0, 1] (inverse of `calibration.shaper_nodes`)."""
    c = 2.0 ** calibration.SHAPER_LOG2_MIN
    lo, hi = calibration.SHAPER_LOG2_MIN, math.log2(float(nodes[-1]) + c)
    return ((torch.log2(x.clamp(min=0.0) + c) - lo) / (hi - lo)).clamp(0.0, 1.0)


def apply_lut_torch(rgb: torch.Tensor, lut: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """Trilinear LUT lookup of (..., 3) scene-linear colours; `lut` is (N, N, N, 3) indexed [r, g, b]."""
    shape = rgb.shape
    u = _shaper(rgb.reshape(-1, 3).to(torch.float32), nodes)
    grid = (u * 2.0 - 1.0)[:, [2, 1, 0]].view(1, 1, 1, -1, 3)  # grid_sample's x, y, z = W(b), H(g), D(r)
    vol = lut.to(device=rgb.device, dtype=torch.float32).permute(3, 0, 1, 2).unsqueeze(0)
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(3, -1).T.reshape(shape)


def apply_lut(rgb: np.ndarray, lut: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """numpy front of `apply_lut_torch` (calibration, tests)."""
    out = apply_lut_torch(torch.from_numpy(np.asarray(rgb, np.float32)), torch.from_numpy(np.asarray(lut, np.float32)),
                          torch.from_numpy(np.asarray(nodes, np.float64)))
    return out.numpy().astype(np.float64)


@functools.lru_cache(maxsize=4)
def load_lut(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(lut (N,N,N,3) float32, nodes (N,) float64) on `device`, from the committed calibration."""
    if not calibration.LUT_PATH.is_file():
        raise FileNotFoundError(f"{calibration.LUT_PATH} is missing: run `python -m render.calibration`")
    with np.load(calibration.LUT_PATH) as z:
        return torch.from_numpy(z["lut"]).to(device), torch.from_numpy(z["nodes"])


def filmic_rgba(premultiplied: torch.Tensor) -> torch.Tensor:
    """(..., 4) premultiplied scene-linear RGBA -> (..., 4) straight display RGBA in [0, 1]."""
    lut, nodes = load_lut(str(premultiplied.device))
    rgb, a = premultiplied[..., :3], premultiplied[..., 3:4].clamp(0.0, 1.0)
    straight = torch.where(a > 0, rgb / a.clamp(min=1e-8), torch.zeros_like(rgb))
    return torch.cat([apply_lut_torch(straight, lut, nodes).clamp(0.0, 1.0), a], dim=-1)
