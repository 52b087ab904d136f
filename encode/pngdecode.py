"""PNG -> RGBA uint8 arrays by the fastest decoder installed, pixel for pixel what Pillow gives.

The feature stage decodes 150 renders per asset; on a GPU node that decode is the loader's main
CPU cost. PNG is lossless, so any decoder that applies no colour management returns the same
pixels for an 8-bit RGB or RGBA image: OpenCV (`cv2.imdecode`, libpng, releases the GIL) and
torchvision (`torchvision.io.decode_png`, libpng; the GPU decoder of torchvision is JPEG-only) are
used for exactly those files. Everything else (palette, grey, 16-bit, RGB with a tRNS colour key,
or not a PNG) goes to Pillow's `convert("RGBA")`, whose conversion rules are the reference's.
"""

from __future__ import annotations

import importlib.util
import io
import struct

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DECODERS = ("cv2", "torchvision", "pil")
"""In order of preference for `auto` (bench/encode_gpu.py measures them side by side)."""


def available() -> list[str]:
    """The decoders importable here."""
    return [d for d in DECODERS if d == "pil" or importlib.util.find_spec(d) is not None]


def choose(name: str = "auto") -> str:
    if name == "auto":
        return available()[0]
    if name not in available():
        raise ValueError(f"PNG decoder {name!r} is not available here (available: {available()})")
    return name


def plain_rgb8(data: bytes) -> bool:
    """True for an 8-bit RGBA PNG, or an 8-bit RGB PNG without a tRNS chunk: the files every decoder
    turns into the same RGBA pixels as Pillow."""
    if len(data) < 33 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return False
    depth, colour, interlace = data[24], data[25], data[28]
    if depth != 8 or interlace != 0:
        return False
    if colour == 6:
        return True
    if colour != 2:
        return False
    pos = 8  # walk the chunks before the image data for a tRNS colour key
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"tRNS":
            return False
        if kind == b"IDAT":
            return True
        pos += 12 + length
    return False


def decode_pil(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()


def _decode_cv2(data: bytes) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError("cv2.imdecode could not decode the PNG")
    return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGBA)


def _decode_torchvision(data: bytes) -> np.ndarray:
    import torch
    from torchvision.io import ImageReadMode, decode_png

    chw = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB_ALPHA)
    return chw.permute(1, 2, 0).contiguous().numpy()


def decode_rgba(data: bytes, decoder: str = "pil") -> np.ndarray:
    """uint8 (H, W, 4) of a PNG (or any image Pillow reads), with `decoder` where it is exact."""
    if decoder != "pil" and plain_rgb8(data):
        return _decode_cv2(data) if decoder == "cv2" else _decode_torchvision(data)
    return decode_pil(data)
