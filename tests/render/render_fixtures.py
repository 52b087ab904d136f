"""Test assets made on the fly: trimesh for mesh formats, bpy (in a subprocess) for the rest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image


def shapes() -> dict[str, trimesh.Trimesh]:
    """Sphere, box, torus and an asymmetric L-shape with a cone (all with outward normals)."""
    leg = trimesh.creation.box(extents=[2.0, 0.5, 0.5])
    leg.apply_translation([0.75, 0.0, 0.0])
    post = trimesh.creation.box(extents=[0.5, 0.5, 1.5])
    post.apply_translation([0.0, 0.0, 0.5])
    cone = trimesh.creation.cone(radius=0.4, height=0.8)
    cone.apply_translation([1.5, 0.6, 0.25])
    asym = trimesh.util.concatenate([leg, post, cone])
    asym.apply_translation([3.0, -2.0, 1.0])  # away from the origin, so normalisation matters
    torus = trimesh.creation.torus(major_radius=1.0, minor_radius=0.3, major_sections=48, minor_sections=16)
    torus.apply_transform(trimesh.transformations.rotation_matrix(0.6, [1, 0, 0]))
    return {
        "sphere": trimesh.creation.icosphere(subdivisions=3, radius=0.7),
        "box": trimesh.creation.box(extents=[1.0, 0.6, 0.3]),
        "torus": torus,
        "asym": asym,
    }


def textured_box(texture_rgb=(200, 40, 40)) -> trimesh.Trimesh:
    m = trimesh.creation.box(extents=[1.0, 1.0, 1.0])
    uv = np.random.default_rng(0).random((len(m.vertices), 2))
    tex = np.zeros((16, 16, 3), np.uint8)
    tex[:] = texture_rgb
    tex[::2, ::2] = (20, 200, 40)
    m.visual = trimesh.visual.TextureVisuals(uv=uv, image=Image.fromarray(tex))
    return m


def write_obj_with_texture(d: Path, name: str = "tex", missing: bool = False) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    m = textured_box()
    obj_text, files = trimesh.exchange.obj.export_obj(m, include_texture=True, return_texture=True,
                                                      mtl_name=f"{name}.mtl")
    for fname, data in files.items():
        if missing and fname.endswith(".png"):
            continue  # the mtl still references it
        (d / fname).write_bytes(data)
    p = d / f"{name}.obj"
    p.write_text(obj_text)
    return p


BPY_SCRIPT = textwrap.dedent(
    """
    import sys, bpy
    src, out = sys.argv[1], sys.argv[2]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=src)
    bpy.ops.export_scene.fbx(filepath=out + "/asym.fbx")
    bpy.ops.wm.usd_export(filepath=out + "/asym.usdc")
    bpy.ops.wm.usd_export(filepath=out + "/asym.usda")
    bpy.ops.wm.usd_export(filepath=out + "/asym.usdz")
    bpy.ops.wm.alembic_export(filepath=out + "/asym.abc", as_background_job=False)
    # a hidden object that must not be rendered from the .blend
    bpy.ops.mesh.primitive_cube_add(location=(30, 30, 30))
    bpy.context.active_object.hide_render = True
    bpy.ops.wm.save_as_mainfile(filepath=out + "/asym.blend", compress=False)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.save_as_mainfile(filepath=out + "/empty.blend")
    """
)


def make_all(d: Path) -> dict[str, Path]:
    """Every fixture, by name. Takes a few seconds (one bpy subprocess)."""
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, mesh in shapes().items():
        p = d / f"{name}.glb"
        mesh.export(p)
        out[name] = p
    asym = shapes()["asym"]
    for ext in ("ply", "stl"):
        p = d / f"asym.{ext}"
        asym.export(p)
        out[ext] = p
    out["glb"] = out["asym"]
    gdir = d / "gltf"
    gdir.mkdir(exist_ok=True)
    for fname, data in trimesh.Scene(asym).export(file_type="gltf").items():
        (gdir / fname).write_bytes(data)
    out["gltf"] = gdir / "model.gltf"
    dae = d / "asym.dae"
    dae.write_bytes(trimesh.exchange.dae.export_collada(asym))
    out["dae"] = dae
    out["obj"] = write_obj_with_texture(d / "obj")
    out["obj_missing_tex"] = write_obj_with_texture(d / "obj_missing", name="miss", missing=True)
    tex_glb = d / "textured.glb"
    textured_box().export(tex_glb)
    out["textured_glb"] = tex_glb
    z = d / "obj_bundle.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted((d / "obj").iterdir()):
            zf.write(f, f"bundle/{f.name}")
    out["obj_zip"] = z
    corrupt = d / "corrupt.glb"
    corrupt.write_bytes(b"glTF" + os.urandom(300))
    out["corrupt"] = corrupt
    empty_glb = d / "empty_scene.obj"
    empty_glb.write_text("# no geometry at all\no nothing\n")
    out["empty_obj"] = empty_glb
    subprocess.run([sys.executable, "-c", BPY_SCRIPT, str(out["asym"]), str(d)], check=True,
                   capture_output=True, timeout=300)
    for ext in ("fbx", "usda", "usdz", "abc", "blend"):
        out[ext] = d / f"asym.{ext}"
    out["usd"] = d / "asym.usd"
    os.replace(d / "asym.usdc", out["usd"])  # .usd is the usual name of a crate file
    out["empty_blend"] = d / "empty.blend"
    return out
