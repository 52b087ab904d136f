"""PLY files of the dataset: voxel centres exactly as the pinned utils3d `write_ply` writes them
(DATA_FORMATS §4 step 6), and a reader that checks the header instead of trusting it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

_HEADER = "ply\nformat binary_little_endian 1.0\nelement vertex {n}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"


def points_ply_bytes(points: np.ndarray) -> bytes:
    pts = np.ascontiguousarray(points, dtype="<f4").reshape(-1, 3)
    return _HEADER.format(n=len(pts)).encode("ascii") + pts.tobytes()


def read_points_ply(data: bytes | str | Path) -> np.ndarray:
    """(N, 3) float32 vertex positions of a vertices-only binary PLY (as written above)."""
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError("not a binary PLY file")
    header = data[: end].decode("ascii").splitlines()
    n = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    props = [line.split()[-1] for line in header if line.startswith("property")]
    if props != ["x", "y", "z"] or "format binary_little_endian 1.0" not in header:
        raise ValueError(f"unexpected PLY layout: {props}")
    body = data[end + len(b"end_header\n"):]
    if len(body) != n * 12:
        raise ValueError(f"PLY body has {len(body)} bytes, expected {n * 12}")
    return np.frombuffer(body, dtype="<f4").reshape(n, 3).copy()
