"""Camera sets of the feature and conditioning renders, and transforms.json (DATA_FORMATS.md §3).

Pure numpy, no Blender: the Blender side only places a camera where these functions say and
reports the matrix it got, so the geometry can be tested without rendering.

Conventions (§3.2, §3.3):
- world is Blender world after normalisation: right-handed, +Z up, object inside [-0.5, 0.5]^3;
- position = r * (cos yaw cos pitch, sin yaw cos pitch, sin pitch), angles in radians (G7);
- camera-to-world matrices use the Blender/OpenGL camera axes (+X right, +Y up, looks along -Z);
- consumers convert to OpenCV by negating camera Y and Z and inverting (`opencv_extrinsics`).

Randomness (G5): the reference draws the Hammersley offsets and the conditioning radii from an
unseeded generator. Here they come from a generator seeded by the asset's sha256, the stage name
and its params (`asset_seed`), and the values drawn are recorded in transforms.json under
`TRELLIS_DATA_KEY`, so a re-render reproduces the same cameras and readers can check them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEATURE_FOV = math.radians(40.0)
"""0.6981317007977318 rad: constant FOV of the feature renders."""
FEATURE_RADIUS = 2.0
FEATURE_VIEWS = 150
FEATURE_RESOLUTION = 512

COND_VIEWS = 24
COND_RESOLUTION = 1024
COND_FOV_MIN = math.radians(10.0)
COND_FOV_MAX = math.radians(70.0)
BOUNDING_SPHERE = math.sqrt(3.0) / 2.0
"""Radius of the bounding sphere of the unit cube; conditioning views frame it exactly."""

AABB = [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]
TRELLIS_DATA_KEY = "trellis_data"
"""Extra top-level key of transforms.json holding seed, offsets and settings (readers ignore it)."""


# -- the reference sequence ---------------------------------------------------------------------
def radical_inverse_base2(i: int) -> float:
    """Van der Corput: the bits of i mirrored after the binary point."""
    if i < 0:
        raise ValueError("index must be non-negative")
    result, f = 0.0, 0.5
    while i:
        if i & 1:
            result += f
        i >>= 1
        f *= 0.5
    return result


def hammersley_yaw_pitch(n: int, o1: float, o2: float) -> tuple[np.ndarray, np.ndarray]:
    """(yaw, pitch) in radians of views 0..n-1: the remapped Hammersley sequence of §3.2.

    The remap sends the first quarter of u below the equator and the rest above (G6);
    yaw is not wrapped (it may exceed 2*pi because v = radical_inverse + o2 may exceed 1).
    """
    if n <= 0:
        raise ValueError("number of views must be positive")
    i = np.arange(n, dtype=np.float64)
    u = i / n + o1 / n
    v = np.array([radical_inverse_base2(k) for k in range(n)], dtype=np.float64) + o2
    u2 = np.where(u < 0.25, 2.0 * u, (2.0 / 3.0) * u + 1.0 / 3.0)
    pitch = np.arccos(1.0 - 2.0 * u2) - np.pi / 2.0
    yaw = 2.0 * np.pi * v
    return yaw, pitch


def camera_position(yaw: float, pitch: float, radius: float) -> np.ndarray:
    return radius * np.array(
        [math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch)],
        dtype=np.float64,
    )


def c2w_look_at_origin(position: Sequence[float]) -> np.ndarray:
    """4x4 camera-to-world of a camera at `position` aimed at the origin with world +Z up.

    Same frame as Blender's Track-To (track -Z, up +Y): z_cam = p/|p|, x_cam = Z x z_cam,
    y_cam = z_cam x x_cam; undefined exactly at the poles.
    """
    p = np.asarray(position, dtype=np.float64)
    z = p / np.linalg.norm(p)
    x = np.cross([0.0, 0.0, 1.0], z)
    nx = np.linalg.norm(x)
    if nx < 1e-12:
        raise ValueError("camera on the vertical axis: look-at frame undefined")
    x /= nx
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, p
    return m


def lens_mm(fov: float, sensor_mm: float = 32.0) -> float:
    """Focal length giving `fov` (radians) across a square sensor of `sensor_mm`."""
    return (sensor_mm / 2.0) / math.tan(fov / 2.0)


def cond_radius_bounds() -> tuple[float, float]:
    """(r_min, r_max) of the conditioning views: the bounding sphere fills 70 deg and 10 deg FOV."""
    return BOUNDING_SPHERE / math.sin(COND_FOV_MAX / 2.0), BOUNDING_SPHERE / math.sin(COND_FOV_MIN / 2.0)


def cond_radius_fov(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radius and FOV of conditioning views from k ~ U[1/r_max^2, 1/r_min^2]."""
    r = 1.0 / np.sqrt(np.asarray(k, dtype=np.float64))
    fov = 2.0 * np.arcsin(BOUNDING_SPHERE / r)
    return r, fov


# -- seeded per-asset draws ---------------------------------------------------------------------
def asset_seed(sha256: str, stage: str, params: Mapping[str, Any] | None = None) -> int:
    """A 63-bit seed from the asset id, the stage name and the stage params."""
    blob = json.dumps({"sha256": sha256, "stage": stage, "params": dict(params or {})},
                      sort_keys=True, default=str, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(blob.encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class View:
    """One camera: where it is (c2w, Blender convention) and its square FOV in radians."""

    c2w: np.ndarray
    fov: float
    yaw: float
    pitch: float
    radius: float

    @property
    def position(self) -> np.ndarray:
        return self.c2w[:3, 3]


@dataclass(frozen=True)
class CameraPlan:
    """The views of one render call plus what was drawn to make them (recorded for G5)."""

    views: list[View]
    seed: int
    draws: dict[str, Any] = field(default_factory=dict)


def _views(yaw: np.ndarray, pitch: np.ndarray, radius: np.ndarray, fov: np.ndarray) -> list[View]:
    out = []
    for y, p, r, f in zip(yaw, pitch, radius, fov):
        out.append(View(c2w_look_at_origin(camera_position(y, p, r)), float(f), float(y), float(p), float(r)))
    return out


def feature_plan(n: int = FEATURE_VIEWS, *, seed: int | None = None, offsets: tuple[float, float] | None = None,
                 radius: float = FEATURE_RADIUS, fov: float = FEATURE_FOV) -> CameraPlan:
    """Feature-render cameras: Hammersley offsets (o1, o2) ~ U[0,1)^2 from `seed`, unless given."""
    if offsets is None:
        rng = np.random.default_rng(seed)
        offsets = (float(rng.random()), float(rng.random()))
    o1, o2 = offsets
    yaw, pitch = hammersley_yaw_pitch(n, o1, o2)
    views = _views(yaw, pitch, np.full(n, radius), np.full(n, fov))
    return CameraPlan(views, seed if seed is not None else -1, {"offsets": [float(o1), float(o2)]})


def cond_plan(n: int = COND_VIEWS, *, seed: int | None = None) -> CameraPlan:
    """Conditioning cameras: Hammersley directions, per-view k ~ U[1/r_max^2, 1/r_min^2] (§3.2)."""
    rng = np.random.default_rng(seed)
    o1, o2 = float(rng.random()), float(rng.random())
    r_min, r_max = cond_radius_bounds()
    k = rng.uniform(1.0 / r_max**2, 1.0 / r_min**2, size=n)
    radius, fov = cond_radius_fov(k)
    yaw, pitch = hammersley_yaw_pitch(n, o1, o2)
    return CameraPlan(_views(yaw, pitch, radius, fov), seed if seed is not None else -1,
                      {"offsets": [o1, o2], "k": [float(x) for x in k]})


# -- OpenCV conversion used by consumers (§3.3) -------------------------------------------------
def opencv_extrinsics(c2w: np.ndarray) -> np.ndarray:
    """World-to-camera 4x4 in the OpenCV convention (+X right, +Y down, looks along +Z)."""
    m = np.array(c2w, dtype=np.float64)
    m[:3, 1:3] *= -1.0
    return np.linalg.inv(m)


def normalized_intrinsics(fov: float) -> np.ndarray:
    f = 0.5 / math.tan(fov / 2.0)
    return np.array([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]])


def project(points: np.ndarray, c2w: np.ndarray, fov: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image coordinates uv in [0,1] ((0,0) = top-left corner) and depth of world points."""
    w2c = opencv_extrinsics(c2w)
    p = np.asarray(points, dtype=np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
    z = p[:, 2]
    uvw = p @ normalized_intrinsics(fov).T
    return uvw[:, :2] / z[:, None], z


# -- transforms.json ----------------------------------------------------------------------------
def _floats(m: np.ndarray) -> list[list[float]]:
    return [[float(x) for x in row] for row in np.asarray(m, dtype=np.float64)]


def transforms_dict(frames: Sequence[tuple[str, float, np.ndarray]], scale: float, offset: Sequence[float],
                    extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The transforms.json object: (file_path, fov, c2w) per frame; all matrix entries as floats."""
    out: dict[str, Any] = {
        "aabb": [[float(x) for x in row] for row in AABB],
        "scale": float(scale),
        "offset": [float(x) for x in offset],
        "frames": [
            {"file_path": name, "camera_angle_x": float(fov), "transform_matrix": _floats(c2w)}
            for name, fov, c2w in frames
        ],
    }
    if extra:
        out[TRELLIS_DATA_KEY] = dict(extra)
    return out


def write_transforms(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=4)


def read_transforms(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def view_name(i: int) -> str:
    """`000.png` ...; four digits from view 1000 on, as `{i:03d}` gives."""
    return f"{i:03d}.png"
