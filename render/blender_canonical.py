"""The one importer of the GPU tier, inside the Blender worker: asset -> canonical normalized form.

`canonical_asset(job)` imports the asset with the same importers and the same normalisation as the
Cycles render (`render.blender_scene`), then writes
- `model.glb`: the normalized scene as glTF 2.0 (metallic-roughness materials, embedded textures,
  vertex colours where the material uses them, modifiers applied), which `render.gltf_read` reads
  for Mitsuba;
- `mesh.ply`: the same normalized mesh the Cycles render stage writes (one exporter, one frame).

It returns scale/offset (identical to the Cycles render of the asset), the asset signals, and what
the canonical form cannot carry: materials whose node graph is not a Principled BSDF fed by image
textures / vertex colours / normal maps (procedural textures, other shaders) are listed with the
fraction of surface area they cover, and a .blend's own world or colour management that differs
from the reference scene is reported. The glTF exporter writes such materials with their constant
inputs only, so these signals are what says the GPU render of that asset is not faithful.
"""

from __future__ import annotations

import os
import time
from typing import Any

import bpy
import numpy as np

from render import blender_scene
from render.scene_spec import WORLD_GREY

CARRIED_NODES = {
    "TEX_IMAGE", "TEX_COORD", "UVMAP", "MAPPING", "SEPARATE_COLOR", "SEPRGB", "NORMAL_MAP", "VERTEX_COLOR",
    "ATTRIBUTE", "REROUTE", "MIX", "MIX_RGB", "MATH",
}
"""Node types the glTF exporter turns into glTF material data (textures, factors, COLOR_0)."""
PRINCIPLED_UNCARRIED = ("Subsurface Weight", "Transmission Weight", "Coat Weight", "Sheen Weight", "Anisotropic")
"""Principled inputs the canonical reader does not render when non-zero or linked."""


def _upstream(node, seen: set) -> list:
    out = []
    for inp in node.inputs:
        for link in inp.links:
            n = link.from_node
            if n.name not in seen:
                seen.add(n.name)
                out.append(n)
                out.extend(_upstream(n, seen))
    return out


def material_problem(mat) -> str | None:
    """Why the canonical form cannot carry `mat` faithfully, or None when it can."""
    if mat is None or not mat.use_nodes or mat.node_tree is None:
        return None  # plain colour materials export as factors
    tree = mat.node_tree
    outs = [n for n in tree.nodes if n.type == "OUTPUT_MATERIAL" and n.is_active_output] or \
           [n for n in tree.nodes if n.type == "OUTPUT_MATERIAL"]
    if not outs or not outs[0].inputs["Surface"].links:
        return "no surface shader"
    shader = outs[0].inputs["Surface"].links[0].from_node
    if shader.type != "BSDF_PRINCIPLED":
        return f"surface shader {shader.type}"
    for name in PRINCIPLED_UNCARRIED:
        sock = shader.inputs.get(name)
        if sock is not None and (sock.links or float(sock.default_value) > 0.0):
            return f"Principled {name}"
    odd = sorted({n.type for n in _upstream(shader, set()) if n.type not in CARRIED_NODES})
    if odd:
        return "nodes " + ", ".join(odd)
    return None


def material_report() -> dict[str, Any]:
    """Materials the canonical form cannot carry, by name, and the surface fraction they cover."""
    problems: dict[str, str] = {}
    area_total = area_bad = 0.0
    for o in blender_scene.scene_objects():
        if o.type != "MESH" or o.data is None or not len(o.data.polygons):
            continue
        me = o.data
        slots = [s.material for s in o.material_slots]
        bad = []
        for m in slots:
            why = material_problem(m)
            if why is not None:
                problems[m.name] = why
            bad.append(why is not None)
        area = np.empty(len(me.polygons), dtype=np.float32)
        me.polygons.foreach_get("area", area)
        midx = np.empty(len(me.polygons), dtype=np.int32)
        me.polygons.foreach_get("material_index", midx)
        det = abs(np.linalg.det(np.array(o.matrix_world.to_3x3())))
        area = area.astype(np.float64) * (det ** (2.0 / 3.0))
        area_total += float(area.sum())
        if bad:
            flags = np.array(bad, dtype=bool)[np.clip(midx, 0, len(bad) - 1)]
            area_bad += float(area[flags].sum())
    return {
        "uncarried_materials": dict(sorted(problems.items())[:20]),
        "n_uncarried_materials": len(problems),
        "uncarried_area_fraction": area_bad / area_total if area_total > 0 else 0.0,
    }


def world_report(is_blend: bool) -> dict[str, Any]:
    """The world the Cycles render would use, when it is a uniform colour; else a signal."""
    world = bpy.context.scene.world
    if world is None or not is_blend:
        return {"world_color": [WORLD_GREY] * 3, "world_carried": True}
    if world.use_nodes and world.node_tree is not None:
        out = [n for n in world.node_tree.nodes if n.type == "OUTPUT_WORLD"]
        link = out[0].inputs["Surface"].links if out else ()
        bg = link[0].from_node if link else None
        if bg is None or bg.type != "BACKGROUND" or bg.inputs["Color"].links or bg.inputs["Strength"].links:
            return {"world_color": [WORLD_GREY] * 3, "world_carried": False}
        c = bg.inputs["Color"].default_value
        s = float(bg.inputs["Strength"].default_value)
        return {"world_color": [float(c[i]) * s for i in range(3)], "world_carried": True}
    return {"world_color": [float(x) for x in world.color], "world_carried": True}


def export_glb(path: str) -> None:
    res = bpy.ops.export_scene.gltf(
        filepath=path, export_format="GLB", export_apply=True, export_yup=True, export_animations=False,
        export_skins=False, export_morph=False, export_cameras=False, export_lights=False,
        export_materials="EXPORT", export_image_format="AUTO", export_vertex_color="MATERIAL",
        export_texcoords=True, export_normals=True, export_extras=False, use_selection=False,
        export_draco_mesh_compression_enable=False)
    if "FINISHED" not in res or not os.path.isfile(path):
        raise blender_scene.SceneError("export_failed", "canonical GLB export failed")


def canonical_asset(job: dict[str, Any]) -> dict[str, Any]:
    """Import, normalise and export one asset (job built by `render.canonical.CanonicalStage`)."""
    import tempfile

    t0 = time.perf_counter()
    out_dir = job["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    fmt = job["format"].lower().lstrip(".")
    with tempfile.TemporaryDirectory(prefix="trellis-canon-") as work:
        blender_scene.reset()
        blender_scene.import_asset(job["input"], fmt, work)
        t_import = time.perf_counter()
        sig = blender_scene.signals()
        if sig["n_faces"] == 0:
            raise blender_scene.SceneError("empty_geometry", f"no faces in the scene ({sig['n_meshes']} meshes)")
        scale, offset = blender_scene.normalize_scene()
        report = {**material_report(), **world_report(fmt == "blend")}
        vs = bpy.context.scene.view_settings
        report["view_transform_carried"] = fmt != "blend" or vs.view_transform == "Filmic"
        mesh_info = blender_scene.export_mesh(os.path.join(out_dir, "mesh.ply"))
        export_glb(os.path.join(out_dir, "model.glb"))
        t_end = time.perf_counter()
    return {
        "scale": scale,
        "offset": offset,
        "signals": sig,
        "canonical": report,
        "mesh": mesh_info,
        "blender": bpy.app.version_string,
        "timings": {"import_s": t_import - t0, "export_s": t_end - t_import, "total_s": t_end - t0},
    }
