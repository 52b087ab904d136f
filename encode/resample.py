"""Pillow's LANCZOS resize of 8-bit RGBA images, bit for bit, as tensor ops (runs on the GPU).

DATA_FORMATS §5 resizes every 512 px view to 518 px with `PIL.Image.resize(..., LANCZOS)`. On a
GPU machine that resize is most of the loader's CPU time, so the feature stage can do it on the
device instead. This reproduces Pillow's integer algorithm exactly (checked against Pillow in the
tests), so features do not change:
- RGBA is resampled premultiplied: RGBA -> RGBa with `(a*v + 128 + ((a*v + 128) >> 8)) >> 8`, and
  back with `min(255, 255*v // a)` where 0 < a < 255 (colours kept as they are for a = 0 or 255);
- separable filter, horizontal pass first, each pass rounding to uint8;
- per output pixel, weights `lanczos3((x + xmin - center + 0.5) / filterscale)` over the window
  `[int(center - support + 0.5), int(center + support + 0.5))`, normalised to sum 1, then converted
  to fixed point with 22 fractional bits (rounded half away from zero); the sum starts at 2^21 and
  is shifted right by 22 (a floor) and clipped to [0, 255].
The sums are exact integers below 2^33, so float64 matrix products compute them exactly.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2
LANCZOS_SUPPORT = 3.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3.0)
    return 0.0


@lru_cache(maxsize=32)
def pil_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) int64 fixed-point weights of Pillow's LANCZOS for one axis."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = LANCZOS_SUPPORT * filterscale
    w = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = sum(k)
        for x in range(xmax):
            v = k[x] / ww if ww != 0.0 else k[x]
            w[xx, xmin + x] = int(-0.5 + v * (1 << PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << PRECISION_BITS))
    return w


def _pass(x: torch.Tensor, weights: np.ndarray, dim: int) -> torch.Tensor:
    """One separable pass over `dim` of an integer-valued float64 tensor, rounded like Pillow."""
    k = torch.from_numpy(weights).to(device=x.device, dtype=torch.float64)
    y = torch.tensordot(x, k, dims=([dim], [1]))  # the new axis goes last
    y = torch.movedim(y, -1, dim)
    return torch.clamp(torch.floor((y + float(1 << (PRECISION_BITS - 1))) / float(1 << PRECISION_BITS)), 0, 255)


def resize_rgba(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 RGBA (B, H, W, 4) -> uint8 (B, size, size, 4), equal to Pillow's RGBA LANCZOS resize."""
    b, h, w, c = pixels.shape
    if c != 4:
        raise ValueError("expects RGBA")
    if (h, w) == (size, size):
        return pixels
    v = pixels.to(torch.int32)
    a = v[..., 3:4]
    tmp = v[..., :3] * a + 128
    pre = torch.cat([((tmp >> 8) + tmp) >> 8, a], -1).to(torch.float64)
    out = pre
    if w != size:
        out = _pass(out, pil_weights(w, size), 2)
    if h != size:
        out = _pass(out, pil_weights(h, size), 1)
    out = out.to(torch.int32)
    alpha = out[..., 3:4]
    partial = (alpha > 0) & (alpha < 255)
    un = torch.clamp((255 * out[..., :3]) // torch.clamp(alpha, min=1), max=255)
    rgb = torch.where(partial, un, out[..., :3])
    return torch.cat([rgb, alpha], -1).to(torch.uint8)
