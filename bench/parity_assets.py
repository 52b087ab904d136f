"""The committed asset set of the render-engine parity benchmark (Cycles vs Mitsuba), made here.

    python -m bench.parity_assets            # (re)writes bench/data/render_parity/assets/

Six small assets, one per case the issue names, each a few tens of kB so the set can be committed:

| name            | format    | what it exercises                                                    |
| --------------- | --------- | -------------------------------------------------------------------- |
| textured_gltf   | .glb      | a lumpy rock with a PBR base-colour texture                          |
| vertex_colors   | .glb      | COLOR_0 vertex colours (glTF multiplies them into the base colour)   |
| obj_mtl         | .obj+.mtl | an OBJ crate with a map_Kd texture (zipped with its .mtl and .png)    |
| metal_rough     | .glb      | a gold metallic sphere (roughness 0.25) on a rough blue dielectric   |
| thin_parts      | .glb      | a stool: 1 %-thick seat, thin legs, a wire ring                       |
| transparency    | .glb      | an alpha-blended shell (alpha 0.35) around an opaque core            |

The generator is deterministic (fixed seeds); the files are committed, so their sha256 (which seeds
the cameras) stays fixed even if a library's exporter changes its bytes later.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

ROOT = Path(__file__).resolve().parent / "data" / "render_parity"
ASSETS = ROOT / "assets"

CASES = {
    "textured_gltf": ("textured_gltf.glb", "glb"),
    "vertex_colors": ("vertex_colors.glb", "glb"),
    "obj_mtl": ("obj_mtl.zip", "zip"),
    "metal_rough": ("metal_rough.glb", "glb"),
    "thin_parts": ("thin_parts.glb", "glb"),
    "transparency": ("transparency.glb", "glb"),
}
"""name -> (file under assets/, format as the catalog records it)."""

PBR = trimesh.visual.material.PBRMaterial


def _png(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))


def textured_rock() -> trimesh.Trimesh:
    rng = np.random.default_rng(7)
    m = trimesh.creation.icosphere(subdivisions=4)
    v = m.vertices
    disp = np.zeros(len(v))
    for k in range(1, 6):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        disp += np.sin(k * 3.0 * (v @ d) + rng.uniform(0, 6.28)) / k
    m.vertices = v * (1.0 + 0.12 * disp[:, None]) * np.array([1.0, 0.8, 0.7])
    u = 0.5 + np.arctan2(v[:, 1], v[:, 0]) / (2 * np.pi)
    w = 0.5 + np.arcsin(np.clip(v[:, 2], -1, 1)) / np.pi
    n = 128
    yy, xx = np.mgrid[0:n, 0:n] / n
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (6 * xx + 2 * np.sin(2 * np.pi * yy)))
    checker = ((np.floor(xx * 8) + np.floor(yy * 8)) % 2)[..., None]
    img = np.stack([0.85 * stripes + 0.1, 0.35 + 0.3 * stripes, 0.15 + 0.1 * stripes], -1)
    img = img * (0.75 + 0.25 * checker)
    mat = PBR(baseColorTexture=_png(img), metallicFactor=0.0, roughnessFactor=0.7)
    m.visual = trimesh.visual.TextureVisuals(uv=np.stack([u, w], 1), material=mat)
    return m


def vertex_colored() -> trimesh.Trimesh:
    m = trimesh.creation.torus(major_radius=1.0, minor_radius=0.35, major_sections=64, minor_sections=24)
    m.apply_transform(trimesh.transformations.rotation_matrix(0.5, [1, 0, 0]))
    ang = np.arctan2(m.vertices[:, 1], m.vertices[:, 0])
    hue = (ang / (2 * np.pi)) % 1.0
    rgb = np.stack([np.abs(hue * 6 - 3) - 1, 2 - np.abs(hue * 6 - 2), 2 - np.abs(hue * 6 - 4)], 1).clip(0, 1)
    rgb = 0.15 + 0.8 * rgb * (0.6 + 0.4 * (m.vertices[:, 2:3] > 0))
    rgba = np.c_[(rgb * 255).astype(np.uint8), np.full(len(rgb), 255, np.uint8)]
    m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=rgba)
    return m


def crate_obj_zip() -> bytes:
    m = trimesh.creation.box(extents=[1.0, 0.8, 0.6])
    m = m.subdivide()
    # per-face planar UVs: each face maps its two largest extents
    m = trimesh.Trimesh(m.vertices[m.faces].reshape(-1, 3), np.arange(len(m.faces) * 3).reshape(-1, 3), process=False)
    fn = np.repeat(m.face_normals, 3, axis=0)
    axis = np.abs(fn).argmax(1)
    uv = np.zeros((len(m.vertices), 2))
    for a in range(3):
        sel = axis == a
        other = [i for i in range(3) if i != a]
        uv[sel] = m.vertices[sel][:, other] + 0.5
    n = 64
    yy, xx = np.mgrid[0:n, 0:n] / n
    plank = (np.floor(yy * 6) % 2)[..., None]
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (18 * xx + 0.6 * np.sin(2 * np.pi * 3 * yy)))
    img = np.stack([0.55 + 0.2 * grain, 0.35 + 0.12 * grain, 0.15 + 0.05 * grain], -1) * (0.7 + 0.3 * plank)
    border = (np.minimum.reduce([xx, yy, 1 - xx, 1 - yy]) < 0.06)[..., None]
    img = np.where(border, np.array([0.2, 0.2, 0.25]), img)
    m.visual = trimesh.visual.TextureVisuals(uv=uv, image=_png(img))
    m.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    obj, files = trimesh.exchange.obj.export_obj(m, include_texture=True, return_texture=True, mtl_name="crate.mtl")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(f"crate/{name}", date_time=(2026, 1, 1, 0, 0, 0))
            zf.writestr(info, files[name])
        zf.writestr(zipfile.ZipInfo("crate/crate.obj", date_time=(2026, 1, 1, 0, 0, 0)), obj)
    return buf.getvalue()


def metal_rough() -> trimesh.Scene:
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.45)
    sphere.apply_translation([0.0, 0.0, 0.45])
    sphere.visual = trimesh.visual.TextureVisuals(material=PBR(
        baseColorFactor=[1.0, 0.77, 0.34, 1.0], metallicFactor=1.0, roughnessFactor=0.25))
    base = trimesh.creation.cylinder(radius=0.8, height=0.2, sections=64)
    base.apply_translation([0.0, 0.0, -0.1])
    base.visual = trimesh.visual.TextureVisuals(material=PBR(
        baseColorFactor=[0.15, 0.3, 0.8, 1.0], metallicFactor=0.0, roughnessFactor=0.9))
    steel = trimesh.creation.box(extents=[0.3, 0.3, 0.3])
    steel.apply_translation([0.55, -0.35, 0.15])
    steel.visual = trimesh.visual.TextureVisuals(material=PBR(
        baseColorFactor=[0.6, 0.6, 0.62, 1.0], metallicFactor=1.0, roughnessFactor=0.55))
    return trimesh.Scene({"gold": sphere, "base": base, "steel": steel})


def thin_parts() -> trimesh.Scene:
    seat = trimesh.creation.cylinder(radius=0.5, height=0.01, sections=64)
    seat.apply_translation([0.0, 0.0, 0.8])
    legs = []
    for k in range(4):
        a = np.pi / 4 + k * np.pi / 2
        leg = trimesh.creation.cylinder(radius=0.015, height=0.8, sections=12)
        leg.apply_translation([0.35 * np.cos(a), 0.35 * np.sin(a), 0.4])
        legs.append(leg)
    ring = trimesh.creation.torus(major_radius=0.36, minor_radius=0.008, major_sections=96, minor_sections=8)
    ring.apply_translation([0.0, 0.0, 0.3])
    wood = PBR(baseColorFactor=[0.7, 0.45, 0.2, 1.0], metallicFactor=0.0, roughnessFactor=0.6, doubleSided=True)
    dark = PBR(baseColorFactor=[0.1, 0.1, 0.1, 1.0], metallicFactor=0.0, roughnessFactor=0.4)
    seat.visual = trimesh.visual.TextureVisuals(material=wood)
    legs_m = trimesh.util.concatenate(legs)
    legs_m.visual = trimesh.visual.TextureVisuals(material=dark)
    ring.visual = trimesh.visual.TextureVisuals(material=dark)
    return trimesh.Scene({"seat": seat, "legs": legs_m, "ring": ring})


def transparency() -> trimesh.Scene:
    shell = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    shell.visual = trimesh.visual.TextureVisuals(material=PBR(
        baseColorFactor=[0.3, 0.7, 0.9, 0.35], alphaMode="BLEND", metallicFactor=0.0, roughnessFactor=0.3))
    core = trimesh.creation.box(extents=[0.4, 0.4, 0.4])
    core.apply_transform(trimesh.transformations.rotation_matrix(0.6, [1, 1, 0]))
    core.visual = trimesh.visual.TextureVisuals(material=PBR(
        baseColorFactor=[0.9, 0.2, 0.1, 1.0], metallicFactor=0.0, roughnessFactor=0.5))
    return trimesh.Scene({"shell": shell, "core": core})


def build(out: Path = ASSETS) -> dict[str, Path]:
    """Write every asset; returns name -> path."""
    out.mkdir(parents=True, exist_ok=True)
    made = {
        "textured_gltf": textured_rock(),
        "vertex_colors": vertex_colored(),
        "metal_rough": metal_rough(),
        "thin_parts": thin_parts(),
        "transparency": transparency(),
    }
    z_up_to_y_up = trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0])  # glTF and OBJ are +Y up
    paths = {}
    for name, obj in made.items():
        obj.apply_transform(z_up_to_y_up)
        p = out / CASES[name][0]
        p.write_bytes(obj.export(file_type="glb"))
        paths[name] = p
    p = out / CASES["obj_mtl"][0]
    p.write_bytes(crate_obj_zip())
    paths["obj_mtl"] = p
    return paths


def assets(root: Path = ASSETS) -> dict[str, tuple[Path, str]]:
    """The committed set: name -> (path, format)."""
    return {name: (root / fname, fmt) for name, (fname, fmt) in CASES.items()}


if __name__ == "__main__":
    for name, path in build().items():
        print(f"{name}: {path} ({path.stat().st_size} bytes)")
    sys.exit(0)
