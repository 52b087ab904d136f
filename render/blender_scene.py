"""Scene set-up and rendering inside the Blender process (bpy 5.x). Imported only by the worker child.

One call, `render_asset(job)`, does everything for one asset (DATA_FORMATS.md §3.1): factory reset,
import, normalisation into [-0.5, 0.5]^3, camera with Track-To, the three reference lights,
Cycles/EEVEE/Workbench settings, one PNG per view, optional passes, and the mesh.ply export. It
returns plain data (scale, offset, the camera matrices Blender actually used, the asset signals,
timings and the settings applied); the parent writes transforms.json.

Deviations from the reference, each deliberate and recorded in the returned `settings`:
- all parentless objects are always parented to one empty at the origin, so `scale`/`offset` are an
  exact affine map p' = s*p + t from source space (G4; the reference's single-root case is not);
- mesh objects without vertices do not enter the normalisation box (their bound box is a point at
  their origin and would stretch the box);
- the pixel filter is set through `pixel_filter_type` (G1), default Blackman-Harris 1.0 px, the
  reference's effective filter; the view transform is Filmic when the build has it (G2).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

import bpy  # noqa: F401  (this module only runs inside the Blender worker)
import numpy as np
from mathutils import Matrix, Vector

from encode.normalize import normalization_transform
from render.cameras import lens_mm
from render.scene_spec import LIGHTS, WORLD_GREY

FORMATS = ("glb", "gltf", "obj", "fbx", "ply", "stl", "blend", "usd", "usda", "usdc", "usdz", "abc", "dae")
GEOMETRY_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT"}


class SceneError(Exception):
    """Raised inside the child with the catalog's error_type; the parent maps it to a StageError."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


# -- reset and import ---------------------------------------------------------------------------
def reset() -> None:
    """Factory settings with an empty scene: nothing of the previous asset survives."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.use_scripts_auto_execute = False


def _call_importer(op, **kw) -> None:
    try:
        res = op(**kw)
    except RuntimeError as exc:  # importers report parse errors this way
        raise SceneError("corrupt_file", f"import failed: {str(exc).strip()[:2000]}") from exc
    if "FINISHED" not in res:
        raise SceneError("corrupt_file", f"importer returned {sorted(res)}")


def _dae_to_glb(path: str, workdir: str) -> str:
    """Blender 5 has no Collada importer: convert with trimesh (pycollada) to a .glb first.

    Collada's <up_axis> is honoured: glTF is +Y up, so a Z_UP file is turned -90 deg about X
    before export, and Blender's glTF importer turns it back to +Z up.
    """
    import trimesh  # noqa: PLC0415

    try:
        scene = trimesh.load(path, file_type="dae", force="scene")
    except Exception as exc:  # pycollada raises many types on malformed XML
        raise SceneError("corrupt_file", f"collada parse failed: {type(exc).__name__}: {exc}") from exc
    if len(scene.geometry) == 0:
        raise SceneError("empty_geometry", "collada file has no geometry")
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("utf-8", "replace")
    if "<up_axis>Z_UP</up_axis>" in head.replace(" ", ""):
        scene.apply_transform(trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0]))
    elif "<up_axis>X_UP</up_axis>" in head.replace(" ", ""):
        scene.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [0, 0, 1]))
    out = os.path.join(workdir, "converted_from_dae.glb")
    scene.export(out, file_type="glb")
    return out


def import_asset(path: str, fmt: str, workdir: str) -> None:
    """Load the asset into the (reset) scene, by format; .blend opens the file as the scene."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise SceneError("unsupported_format", f"no importer for .{fmt}")
    if not os.path.isfile(path):
        raise SceneError("missing_upstream", f"asset file not found: {path}")
    if os.path.getsize(path) == 0:
        raise SceneError("empty_file", "asset file is empty")
    ops = bpy.ops
    if fmt == "blend":
        _call_importer(ops.wm.open_mainfile, filepath=path, load_ui=False, use_scripts=False)
        bpy.context.preferences.filepaths.use_scripts_auto_execute = False
        _strip_hidden()
    elif fmt in ("glb", "gltf"):
        _call_importer(ops.import_scene.gltf, filepath=path, merge_vertices=True, import_shading="NORMALS")
    elif fmt == "obj":
        _call_importer(ops.wm.obj_import, filepath=path, forward_axis="NEGATIVE_Z", up_axis="Y")
    elif fmt == "fbx":
        _call_importer(ops.import_scene.fbx, filepath=path)
    elif fmt == "ply":
        _call_importer(ops.wm.ply_import, filepath=path)
    elif fmt == "stl":
        _call_importer(ops.wm.stl_import, filepath=path)
    elif fmt in ("usd", "usda", "usdc", "usdz"):
        _call_importer(ops.wm.usd_import, filepath=path)
    elif fmt == "abc":
        _call_importer(ops.wm.alembic_import, filepath=path, as_background_job=False)
    elif fmt == "dae":
        glb = _dae_to_glb(path, workdir)
        _call_importer(ops.import_scene.gltf, filepath=glb, merge_vertices=True, import_shading="NORMALS")
    _remove_cameras_and_lights()


def _remove_object_keep_children(obj) -> None:
    for child in list(obj.children):
        mw = child.matrix_world.copy()
        child.parent = None
        child.matrix_world = mw
    bpy.data.objects.remove(obj, do_unlink=True)


def _remove_cameras_and_lights() -> None:
    bpy.context.view_layer.update()
    for obj in list(bpy.data.objects):
        if obj.type in ("CAMERA", "LIGHT", "LIGHT_PROBE", "SPEAKER"):
            _remove_object_keep_children(obj)


def _strip_hidden() -> None:
    """.blend assets: drop objects hidden in viewport or render and hidden/excluded collections."""
    scene = bpy.context.scene
    view_objs = set(bpy.context.view_layer.objects)
    for coll in list(bpy.data.collections):
        if coll.hide_render or coll.hide_viewport:
            for obj in list(coll.objects):
                bpy.data.objects.remove(obj, do_unlink=True)
            bpy.data.collections.remove(coll)
    for obj in list(bpy.data.objects):
        gone = obj not in view_objs or obj.hide_render or obj.hide_viewport
        if not gone:
            try:
                gone = obj.hide_get()
            except RuntimeError:
                gone = False
        if gone:
            bpy.data.objects.remove(obj, do_unlink=True)
    scene.render.use_compositing = False
    scene.render.use_sequencer = False


# -- signals ------------------------------------------------------------------------------------
def _image_nodes(tree, seen: set) -> list:
    out = []
    if tree is None or tree.name_full in seen:
        return out
    seen.add(tree.name_full)
    for node in tree.nodes:
        if node.type == "TEX_IMAGE":
            out.append(node)
        elif node.type == "GROUP" and node.node_tree is not None:
            out.extend(_image_nodes(node.node_tree, seen))
    return out


def _image_missing(img) -> bool:
    """A referenced image with no pixels: file not found or unreadable (size stays 0x0)."""
    if img.source not in ("FILE", "SEQUENCE", "TILED"):
        return False
    if img.packed_file is not None:
        return False
    try:
        w, h = img.size[:]
    except Exception:
        return True
    return w == 0 or h == 0


def scene_objects() -> list:
    return list(bpy.context.view_layer.objects)


def signals() -> dict[str, Any]:
    """Per-asset counts and the 'default grey' problem (area-weighted fraction with no material)."""
    meshes = [o for o in scene_objects() if o.type == "MESH" and o.data is not None]
    n_faces = n_verts = n_tris = 0
    mats, images, empty_image_nodes = set(), {}, 0
    area_total = area_nomat = 0.0
    has_colors = has_uv = False
    for o in meshes:
        me = o.data
        n_faces += len(me.polygons)
        n_verts += len(me.vertices)
        if len(me.polygons):
            loop_total = np.empty(len(me.polygons), dtype=np.int32)
            me.polygons.foreach_get("loop_total", loop_total)
            n_tris += int((loop_total - 2).sum())
        has_colors |= len(me.color_attributes) > 0
        has_uv |= len(me.uv_layers) > 0
        slot_mats = [s.material for s in o.material_slots]
        for m in slot_mats:
            if m is not None:
                mats.add(m)
        if len(me.polygons):
            area = np.empty(len(me.polygons), dtype=np.float32)
            me.polygons.foreach_get("area", area)
            midx = np.empty(len(me.polygons), dtype=np.int32)
            me.polygons.foreach_get("material_index", midx)
            det = abs(np.linalg.det(np.array(o.matrix_world.to_3x3())))
            area = area.astype(np.float64) * (det ** (2.0 / 3.0))
            has_mat = np.array([m is not None for m in slot_mats] or [False], dtype=bool)
            ok = has_mat[np.clip(midx, 0, len(has_mat) - 1)] if slot_mats else np.zeros(len(midx), bool)
            if slot_mats:
                ok &= midx < len(slot_mats)
            area_total += float(area.sum())
            area_nomat += float(area[~ok].sum())
    for m in mats:
        if m.node_tree is None:
            continue
        for node in _image_nodes(m.node_tree, set()):
            if node.image is None:
                empty_image_nodes += 1
            else:
                images[node.image.name_full] = node.image
    missing = sorted(name for name, img in images.items() if _image_missing(img))
    n_textures = len(images) - len(missing)
    return {
        "n_objects": len(scene_objects()),
        "n_meshes": len(meshes),
        "n_faces": int(n_faces),
        "n_triangles": int(n_tris),
        "n_vertices": int(n_verts),
        "n_materials": len(mats),
        "n_textures": int(n_textures),
        "n_missing_textures": len(missing),
        "missing_textures": missing[:20],
        "any_missing_texture": bool(missing),
        "n_empty_image_nodes": int(empty_image_nodes),
        "has_vertex_colors": bool(has_colors),
        "has_uv": bool(has_uv),
        "no_material_fraction": (area_nomat / area_total) if area_total > 0 else 1.0,
        "textureless": bool(n_textures == 0 and not has_colors),
    }


# -- normalisation ------------------------------------------------------------------------------
def _mesh_bbox() -> tuple[np.ndarray, np.ndarray]:
    bpy.context.view_layer.update()
    pts = []
    for o in scene_objects():
        if o.type != "MESH" or o.data is None or len(o.data.vertices) == 0:
            continue
        mw = o.matrix_world
        pts.extend((mw @ Vector(c))[:] for c in o.bound_box)
    if not pts:
        raise SceneError("empty_geometry", "scene has no mesh with vertices")
    a = np.array(pts, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise SceneError("non_finite", "non-finite coordinates in the scene bounding box")
    return a.min(0), a.max(0)


def normalize_scene() -> tuple[float, list[float]]:
    """Parent every root to one empty at the origin, scale by s and translate by t (§3.1 step 3)."""
    lo, hi = _mesh_bbox()
    try:
        s, t = normalization_transform(lo, hi)
    except ValueError as exc:
        raise SceneError("empty_geometry", str(exc)) from exc
    root = bpy.data.objects.new("trellis_normalize_root", None)
    bpy.context.scene.collection.objects.link(root)
    for o in scene_objects():
        if o.parent is None and o is not root:
            o.parent = root
            o.matrix_parent_inverse = Matrix.Identity(4)
    root.scale = (s, s, s)
    root.location = tuple(float(x) for x in t)
    bpy.context.view_layer.update()
    return float(s), [float(x) for x in t]


# -- camera, lights, settings -------------------------------------------------------------------
def add_camera():
    scene = bpy.context.scene
    data = bpy.data.cameras.new("Camera")
    data.sensor_width = 32.0
    data.sensor_height = 32.0
    cam = bpy.data.objects.new("Camera", data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    target = bpy.data.objects.new("trellis_camera_target", None)
    scene.collection.objects.link(target)
    con = cam.constraints.new("TRACK_TO")
    con.target = target
    con.track_axis = "TRACK_NEGATIVE_Z"
    con.up_axis = "UP_Y"
    return cam


def add_lights() -> None:
    """The three reference lights of `render.scene_spec.LIGHTS`."""
    scene = bpy.context.scene
    for spec in LIGHTS:
        data = bpy.data.lights.new(spec.name, spec.kind)
        data.energy = spec.watts
        obj = bpy.data.objects.new(spec.name, data)
        obj.location = spec.location
        obj.scale = (spec.scale, spec.scale, spec.scale)
        scene.collection.objects.link(obj)


def ensure_world() -> None:
    """The factory world when the scene has none: uniform WORLD_GREY radiance (strength 1).

    A new world in bpy 5 has a node tree whose Background colour (0.05) wins over `world.color`,
    so both are set (measured: `render.calibration` reads the world's radiance back)."""
    scene = bpy.context.scene
    if scene.world is None:
        world = bpy.data.worlds.new("World")
        world.color = (WORLD_GREY, WORLD_GREY, WORLD_GREY)
        for node in (world.node_tree.nodes if world.node_tree else ()):
            if node.type == "BACKGROUND":
                node.inputs["Color"].default_value = (WORLD_GREY, WORLD_GREY, WORLD_GREY, 1.0)
                node.inputs["Strength"].default_value = 1.0
        scene.world = world


def _set_device(device: str) -> str:
    """'CPU', 'GPU' (any available) or a compute type ('CUDA', 'OPTIX', 'HIP', 'ONEAPI', 'METAL')."""
    scene = bpy.context.scene
    device = device.upper()
    if device == "CPU":
        scene.cycles.device = "CPU"
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    kinds = [device] if device != "GPU" else ["OPTIX", "CUDA", "HIP", "ONEAPI", "METAL"]
    for kind in kinds:
        try:
            prefs.compute_device_type = kind
        except TypeError:
            continue
        prefs.get_devices()
        devs = [d for d in prefs.devices if d.type == kind]
        if devs:
            for d in prefs.devices:
                d.use = d.type == kind
            scene.cycles.device = "GPU"
            return kind
    raise SceneError("device_unavailable", f"no Cycles {device} device available")


def apply_settings(job: dict[str, Any], is_blend: bool) -> dict[str, Any]:
    """Engine, resolution, output format, sampling, filter, colour management; returns what was set."""
    scene = bpy.context.scene
    r = scene.render
    engine = job["engine"]
    r.engine = engine
    r.resolution_x = r.resolution_y = int(job["resolution"])
    r.resolution_percentage = 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.use_border = False
    r.film_transparent = True
    r.use_motion_blur = False
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.image_settings.color_depth = "8"
    r.image_settings.compression = int(job.get("png_compression", 15))
    threads = int(job.get("threads") or 0)
    r.threads_mode = "FIXED" if threads > 0 else "AUTO"
    if threads > 0:
        r.threads = threads
    r.use_persistent_data = bool(job.get("persistent_data", True))
    settings: dict[str, Any] = {"engine": engine, "resolution": int(job["resolution"]),
                                "blender": bpy.app.version_string}
    if engine == "CYCLES":
        c = scene.cycles
        settings["device"] = _set_device(job.get("device", "CPU"))
        c.samples = int(job["samples"])
        c.seed = int(job.get("seed", 0))
        c.use_denoising = bool(job["denoise"])
        if job["denoise"]:
            c.denoiser = "OPENIMAGEDENOISE"
        c.pixel_filter_type = job["pixel_filter"]
        c.filter_width = float(job["filter_width"])
        c.diffuse_bounces = 1
        c.glossy_bounces = 1
        c.transparent_max_bounces = 3
        c.transmission_bounces = 3
        settings.update(samples=c.samples, seed=c.seed, denoise=bool(c.use_denoising),
                        denoiser=c.denoiser if c.use_denoising else None,
                        pixel_filter_type=c.pixel_filter_type, filter_width=c.filter_width,
                        adaptive_sampling=bool(c.use_adaptive_sampling),
                        adaptive_threshold=float(c.adaptive_threshold))
    elif engine == "BLENDER_EEVEE":
        scene.eevee.taa_render_samples = int(job["samples"])
        settings.update(samples=int(job["samples"]), filter_size=float(r.filter_size))
    elif engine == "BLENDER_WORKBENCH":
        settings.update(render_aa=scene.display.render_aa)
    else:
        raise SceneError("bad_input", f"unknown engine {engine!r}")
    vs = scene.view_settings
    wanted = job.get("view_transform") or "Filmic"
    if is_blend and job.get("blend_keeps_color_management", True):
        settings["view_transform_source"] = "blend_file"
    else:
        try:
            vs.view_transform = wanted
            vs.look = "None"
            vs.exposure = 0.0
            vs.gamma = 1.0
        except TypeError:
            settings["view_transform_fallback"] = f"{wanted} not available"
    settings["view_transform"] = vs.view_transform
    settings["look"] = vs.look
    return settings


# -- optional passes ----------------------------------------------------------------------------
PASS_SOCKETS = {"depth": ("Depth", "FLOAT"), "normal": ("Normal", "VECTOR"), "albedo": ("Diffuse Color", "RGBA")}


def setup_passes(passes: list[str], out_dir: str):
    """Depth / normal / albedo per view as single-layer EXRs through the 5.x compositor API."""
    if not passes:
        return None
    scene = bpy.context.scene
    vl = bpy.context.view_layer
    unknown = set(passes) - set(PASS_SOCKETS)
    if unknown:
        raise SceneError("bad_input", f"unknown passes {sorted(unknown)}")
    vl.use_pass_z = "depth" in passes
    vl.use_pass_normal = "normal" in passes
    vl.use_pass_diffuse_color = "albedo" in passes
    tree = bpy.data.node_groups.new("trellis_passes", "CompositorNodeTree")
    scene.compositing_node_group = tree
    scene.render.use_compositing = True
    rl = tree.nodes.new("CompositorNodeRLayers")
    out = tree.nodes.new("NodeGroupOutput")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    tree.links.new(rl.outputs["Image"], out.inputs[0])
    fo = tree.nodes.new("CompositorNodeOutputFile")
    fo.directory = out_dir
    fo.format.media_type = "IMAGE"
    fo.format.file_format = "OPEN_EXR"
    fo.format.color_depth = "32"
    for name in passes:
        socket_name, kind = PASS_SOCKETS[name]
        item_kind = {"FLOAT": "FLOAT", "VECTOR": "VECTOR", "RGBA": "RGBA"}[kind]
        fo.file_output_items.new(item_kind, name)
        tree.links.new(rl.outputs[socket_name], fo.inputs[name])
    return fo


# -- mesh export --------------------------------------------------------------------------------
def export_mesh(path: str) -> dict[str, Any]:
    """Binary PLY of every object's geometry, world transforms applied, identity axes, triangles."""
    vl = bpy.context.view_layer
    for o in scene_objects():
        o.hide_viewport = False
        try:
            o.hide_set(False)
        except RuntimeError:
            pass
    others = [o for o in scene_objects() if o.type in GEOMETRY_TYPES - {"MESH"}]
    if others:
        for o in scene_objects():
            o.select_set(o in others)
        vl.objects.active = others[0]
        try:
            bpy.ops.object.convert(target="MESH")
        except RuntimeError:
            pass  # the exporter still takes their evaluated geometry
    res = bpy.ops.wm.ply_export(filepath=path, ascii_format=False, export_selected_objects=False,
                                apply_modifiers=True, export_triangulated_mesh=True, forward_axis="Y",
                                up_axis="Z", global_scale=1.0, export_normals=True, export_uv=True)
    if "FINISHED" not in res or not os.path.isfile(path):
        raise SceneError("export_failed", "mesh.ply export failed")
    return {"converted_non_mesh": len(others)}


# -- the job ------------------------------------------------------------------------------------
def _c2w(cam) -> list[list[float]]:
    loc, rot, _scale = cam.matrix_world.decompose()
    m = Matrix.Translation(loc) @ rot.to_matrix().to_4x4()
    return [[float(m[i][j]) for j in range(4)] for i in range(4)]


def render_asset(job: dict[str, Any]) -> dict[str, Any]:
    """Render one asset as described by `job` (built by `RenderStage.job`); returns plain data."""
    t0 = time.perf_counter()
    out_dir = job["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    fmt = job["format"].lower().lstrip(".")
    with tempfile.TemporaryDirectory(prefix="trellis-bl-") as work:
        reset()
        import_asset(job["input"], fmt, work)
        t_import = time.perf_counter()
        sig = signals()
        if sig["n_faces"] == 0:
            raise SceneError("empty_geometry", f"no faces in the scene ({sig['n_meshes']} meshes, "
                                               f"{sig['n_vertices']} vertices)")
        scale, offset = normalize_scene()  # uniform scale: area fractions in `sig` stay valid
        ensure_world()
        cam = add_camera()
        add_lights()
        settings = apply_settings(job, is_blend=(fmt == "blend"))
        passes = list(job.get("passes") or [])
        fo = setup_passes(passes, out_dir) if passes else None
        if not passes:
            bpy.context.scene.render.use_compositing = False
        settings["passes"] = passes
        t_setup = time.perf_counter()
        scene = bpy.context.scene
        matrices, view_s = [], []
        for i, view in enumerate(job["views"]):
            tv = time.perf_counter()
            cam.location = tuple(float(x) for x in view["position"])
            cam.data.lens = lens_mm(float(view["fov"]), cam.data.sensor_width)
            bpy.context.view_layer.update()
            matrices.append(_c2w(cam))
            if fo is not None:
                fo.file_name = f"{os.path.splitext(view['name'])[0]}_"
            scene.render.filepath = os.path.join(out_dir, view["name"])
            bpy.ops.render.render(write_still=True)
            if not os.path.isfile(scene.render.filepath):
                raise SceneError("render_failed", f"view {view['name']} was not written")
            view_s.append(time.perf_counter() - tv)
        t_render = time.perf_counter()
        mesh_info = {}
        if job.get("save_mesh"):
            mesh_info = export_mesh(os.path.join(out_dir, "mesh.ply"))
        t_end = time.perf_counter()
    return {
        "scale": scale,
        "offset": offset,
        "matrices": matrices,
        "signals": sig,
        "settings": settings,
        "mesh": mesh_info,
        "timings": {
            "import_s": t_import - t0,
            "setup_s": t_setup - t_import,
            "render_s": t_render - t_setup,
            "view_s": view_s,
            "export_s": t_end - t_render,
            "total_s": t_end - t0,
        },
    }
