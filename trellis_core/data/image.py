"""Conditioning-image preprocessing.

* :func:`crop_cond_image` -- the training reader's crop (DATA_FORMATS §9.2 "Conditioning image"):
  bbox of alpha != 0, half-size x 1.2, int-truncated box, PIL crop (transparent black outside),
  LANCZOS to 518, RGB premultiplied by alpha -> float (3, S, S) in [0, 1].
* :func:`preprocess_image` -- the generation pipeline's crop (MODELS.md 5): bbox of alpha > 0.8*255,
  ``s = int(1.2 max(w, h))``, box ``centre +- s // 2``, LANCZOS 518, premultiplied, back to 8-bit RGB.
  Background removal (rembg) is not done: an image without a useful alpha is used whole.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

__all__ = ["crop_cond_image", "preprocess_image", "image_to_tensor", "EmptyAlphaError"]


class EmptyAlphaError(ValueError):
    """The render has no visible pixel (the reader then draws another sample)."""


def crop_cond_image(img: Image.Image, size: int = 518) -> torch.Tensor:
    img = img.convert("RGBA")
    alpha = np.asarray(img.getchannel("A"))
    ys, xs = np.nonzero(alpha)
    if xs.size == 0:
        raise EmptyAlphaError("conditioning render has an empty alpha channel")
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h = max(x1 - x0, y1 - y0) / 2 * 1.2
    box = (int(cx - h), int(cy - h), int(cx + h), int(cy + h))
    img = img.crop(box).resize((size, size), Image.Resampling.LANCZOS)
    a = np.asarray(img, dtype=np.float32) / 255.0
    rgb = a[..., :3] * a[..., 3:4]
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def preprocess_image(img: Image.Image, size: int = 518) -> Image.Image:
    has_alpha = img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info)
    img = img.convert("RGBA")
    alpha = np.asarray(img.getchannel("A"))
    if not has_alpha or alpha.min() == 255:
        return img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    ys, xs = np.nonzero(alpha > 0.8 * 255)
    if xs.size == 0:
        raise EmptyAlphaError("image alpha has no pixel above 0.8")
    cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
    s = int(1.2 * max(xs.max() - xs.min(), ys.max() - ys.min()))
    box = (cx - s // 2, cy - s // 2, cx + s // 2, cy + s // 2)
    img = img.crop(tuple(round(v) for v in box)).resize((size, size), Image.Resampling.LANCZOS)
    a = np.asarray(img, dtype=np.float32) / 255.0
    rgb = (a[..., :3] * a[..., 3:4] * 255).astype(np.uint8)
    return Image.fromarray(rgb)


def image_to_tensor(img: Image.Image, size: int = 518) -> torch.Tensor:
    """RGB float (3, S, S) in [0, 1] (LANCZOS resize when needed)."""
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
