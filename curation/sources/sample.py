"""The built-in `sample` source: 20 deterministic procedural assets, no network needed.

Shapes vary (primitives, composites, revolved and extruded profiles, a seeded convex hull),
some carry a PNG base-colour texture, some vertex colours, some nothing (the "default grey"
case), in glb / obj / ply. Every asset is generated from its name alone, so any worker on any node
can `fetch` it and the bytes (hence the sha256 identity) are the same everywhere.
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import trimesh
from PIL import Image

from curation.sources.base import AssetRecord, Source, sha256_file


def _checker(colors: tuple[tuple[int, int, int], tuple[int, int, int]], n: int = 8, size: int = 64) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] * n // size
    mask = ((xx + yy) % 2).astype(bool)
    img = np.empty((size, size, 3), np.uint8)
    img[mask] = colors[0]
    img[~mask] = colors[1]
    return Image.fromarray(img)


def _cylindrical_uv(mesh: trimesh.Trimesh) -> np.ndarray:
    v = mesh.vertices - mesh.vertices.mean(axis=0)
    u = (np.arctan2(v[:, 1], v[:, 0]) / (2 * math.pi)) + 0.5
    h = np.ptp(v[:, 2]) or 1.0
    return np.stack([u, (v[:, 2] - v[:, 2].min()) / h], axis=1)


def _textured(mesh: trimesh.Trimesh, colors) -> trimesh.Trimesh:
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=_checker(colors), metallicFactor=0.0, roughnessFactor=0.8)
    mesh.visual = trimesh.visual.TextureVisuals(uv=_cylindrical_uv(mesh), material=material)
    return mesh


def _vertex_coloured(mesh: trimesh.Trimesh, axis: int = 2) -> trimesh.Trimesh:
    v = mesh.vertices[:, axis]
    t = (v - v.min()) / (np.ptp(v) or 1.0)
    rgba = np.stack([255 * t, 80 + 100 * (1 - t), 255 * (1 - t), np.full_like(t, 255)], axis=1).astype(np.uint8)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba)
    return mesh


def _placed(mesh: trimesh.Trimesh, translate=(0, 0, 0), rotate_deg: float = 0.0, axis=(0, 0, 1)) -> trimesh.Trimesh:
    m = mesh.copy()
    if rotate_deg:
        m.apply_transform(trimesh.transformations.rotation_matrix(math.radians(rotate_deg), axis))
    m.apply_translation(translate)
    return m


def _revolve(profile: list[tuple[float, float]], sections: int = 48) -> trimesh.Trimesh:
    return trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=sections)


def _star(points: int = 5, r_out: float = 1.0, r_in: float = 0.45, height: float = 0.3) -> trimesh.Trimesh:
    """A star prism: the outline is star-shaped about its centre, so a centre fan triangulates it."""
    n = 2 * points
    ang = np.arange(n) * math.pi / points
    rad = np.where(np.arange(n) % 2 == 0, r_out, r_in)
    ring = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    verts = np.concatenate([
        np.c_[ring, np.zeros(n)], np.c_[ring, np.full(n, height)], [[0, 0, 0], [0, 0, height]]])
    bot, top = 2 * n, 2 * n + 1
    faces = []
    for i in range(n):
        j = (i + 1) % n
        faces += [[bot, j, i], [top, n + i, n + j], [i, j, n + j], [i, n + j, n + i]]
    return trimesh.Trimesh(verts, np.asarray(faces), process=True)


def _twisted_box() -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=(0.4, 0.4, 2.0))
    m = m.subdivide().subdivide().subdivide()
    v = m.vertices.copy()
    a = v[:, 2] * math.pi / 3
    c, s = np.cos(a), np.sin(a)
    m.vertices = np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1], v[:, 2]], axis=1)
    return m


def _hull(seed: int) -> trimesh.Trimesh:
    pts = np.random.default_rng(seed).normal(size=(64, 3)) * (1.0, 0.6, 0.8)
    return trimesh.convex.convex_hull(pts)


def _half(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Keep the faces on the +Y side (an open arch)."""
    keep = mesh.triangles_center[:, 1] >= 0
    return trimesh.Trimesh(mesh.vertices, mesh.faces[keep], process=True)


def _scene(*meshes: trimesh.Trimesh) -> trimesh.Scene:
    scene = trimesh.Scene()
    for i, m in enumerate(meshes):
        scene.add_geometry(m, node_name=f"part{i}", geom_name=f"part{i}")
    return scene


Builder = Callable[[], "trimesh.Trimesh | trimesh.Scene"]
WOOD = ((160, 110, 60), (120, 80, 40))
RED = ((200, 40, 40), (240, 220, 200))
BLUE = ((40, 80, 200), (220, 230, 250))

SAMPLES: dict[str, tuple[str, Builder]] = {
    "box": ("obj", lambda: trimesh.creation.box(extents=(1.0, 0.6, 0.4))),
    "icosphere": ("ply", lambda: _vertex_coloured(trimesh.creation.icosphere(subdivisions=3))),
    "uv_sphere": ("glb", lambda: _vertex_coloured(trimesh.creation.uv_sphere(radius=1.0, count=(24, 24)), axis=0)),
    "cylinder": ("glb", lambda: _textured(trimesh.creation.cylinder(radius=0.5, height=1.5, sections=32), WOOD)),
    "cone": ("obj", lambda: trimesh.creation.cone(radius=0.6, height=1.2, sections=32)),
    "capsule": ("ply", lambda: _vertex_coloured(trimesh.creation.capsule(height=1.0, radius=0.35))),
    "torus": ("glb", lambda: _textured(trimesh.creation.torus(major_radius=0.8, minor_radius=0.25), RED)),
    "annulus": ("obj", lambda: trimesh.creation.annulus(r_min=0.5, r_max=0.9, height=0.3)),
    "table": ("glb", lambda: _scene(
        _textured(trimesh.creation.box(extents=(1.6, 1.0, 0.08)), WOOD).apply_translation((0, 0, 0.75)),
        *[_placed(trimesh.creation.cylinder(radius=0.05, height=0.75), (x, y, 0.375))
          for x in (-0.7, 0.7) for y in (-0.4, 0.4)])),
    "chair": ("glb", lambda: _scene(
        _vertex_coloured(trimesh.creation.box(extents=(0.5, 0.5, 0.06))).apply_translation((0, 0, 0.45)),
        trimesh.creation.box(extents=(0.5, 0.06, 0.5)).apply_translation((0, 0.22, 0.73)),
        *[_placed(trimesh.creation.box(extents=(0.05, 0.05, 0.45)), (x, y, 0.225))
          for x in (-0.2, 0.2) for y in (-0.2, 0.2)])),
    "star": ("glb", lambda: _textured(_star(), BLUE)),
    "vase": ("ply", lambda: _vertex_coloured(_revolve([(0.0, 0.0), (0.4, 0.0), (0.5, 0.3), (0.3, 0.8), (0.35, 1.2), (0.0, 1.2)]))),
    "offset_box": ("obj", lambda: _placed(trimesh.creation.box(extents=(30.0, 10.0, 5.0)), (100.0, -40.0, 12.0), 30)),
    "long_capsule": ("glb", lambda: _placed(trimesh.creation.capsule(height=3.0, radius=0.2), rotate_deg=90, axis=(0, 1, 0))),
    "icosahedron": ("obj", lambda: trimesh.creation.icosahedron()),
    "snowman": ("glb", lambda: _scene(*[
        _vertex_coloured(trimesh.creation.icosphere(subdivisions=2, radius=r)).apply_translation((0, 0, z))
        for r, z in ((0.5, 0.5), (0.35, 1.2), (0.22, 1.7))])),
    "mushroom": ("glb", lambda: _scene(
        _textured(_revolve([(0.0, 0.0), (0.7, 0.0), (0.5, 0.3), (0.0, 0.45)]), RED).apply_translation((0, 0, 0.6)),
        trimesh.creation.cylinder(radius=0.15, height=0.6, sections=24).apply_translation((0, 0, 0.3)))),
    "twisted_box": ("ply", _twisted_box),
    "hull": ("obj", lambda: _hull(7)),
    "arch": ("glb", lambda: _textured(_half(trimesh.creation.torus(major_radius=1.0, minor_radius=0.15, major_sections=48)), WOOD)),
}


def build_sample(name: str) -> bytes:
    """The file bytes of sample asset `name` (deterministic)."""
    fmt, builder = SAMPLES[name]
    obj = builder()
    if fmt == "ply":
        mesh = obj if isinstance(obj, trimesh.Trimesh) else obj.dump(concatenate=True)
        return trimesh.exchange.ply.export_ply(mesh, encoding="binary")
    if fmt == "obj":
        mesh = obj if isinstance(obj, trimesh.Trimesh) else obj.dump(concatenate=True)
        return trimesh.exchange.obj.export_obj(mesh, include_texture=False).encode()
    buf = io.BytesIO()
    buf.write(trimesh.exchange.gltf.export_glb(obj if isinstance(obj, trimesh.Scene) else trimesh.Scene(obj)))
    return buf.getvalue()


class SampleSource(Source):
    """20 procedural assets; `names` may restrict the set (tests)."""

    name = "sample"

    def _names(self) -> list[str]:
        return list(self.options.get("names") or SAMPLES)

    def list_assets(self) -> Iterator[AssetRecord]:
        with tempfile.TemporaryDirectory(prefix="trellis-sample-") as d:
            for name in self._names():
                fmt = SAMPLES[name][0]
                path = Path(d) / f"{name}.{fmt}"
                path.write_bytes(build_sample(name))
                yield AssetRecord(
                    sha256=sha256_file(path),
                    source=self.name,
                    file_identifier=f"sample://{name}.{fmt}",
                    locator=name,
                    format=fmt,
                    size_bytes=path.stat().st_size,
                    license="CC0-1.0",
                    captions=[f"a procedural {name.replace('_', ' ')}"],
                    aesthetic_score=None,
                )

    def fetch(self, asset: Mapping[str, Any], dest_dir: Path) -> Path:
        name = asset["locator"]
        if name not in SAMPLES:
            raise FileNotFoundError(f"no sample asset named {name!r}")
        path = Path(dest_dir) / f"{name}.{SAMPLES[name][0]}"
        path.write_bytes(build_sample(name))
        return path


def copy_samples(dest: str | Path) -> list[Path]:
    """Write every sample asset into `dest` (handy for the `local` source and for tests)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name, (fmt, _) in SAMPLES.items():
        p = dest / f"{name}.{fmt}"
        p.write_bytes(build_sample(name))
        out.append(p)
    return out


__all__ = ["SampleSource", "SAMPLES", "build_sample", "copy_samples"]
