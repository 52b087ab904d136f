"""Measure what the GPU engine must reproduce of Blender: the Filmic view transform and light units.

    python -m render.calibration          # renders in Blender here, writes render/data/*

Nothing here is taken from Blender's colour-management files or light code; it is measured by
rendering calibration targets with the same bpy/Cycles the reference renders use:

1. **View transform.** An orthographic camera looks at a plane whose emission colour comes from a
   float texture (Non-Color, closest-texel lookup, one texel per pixel, box filter 1 px, so each
   pixel sees exactly one texel). The texels hold a 33^3 lattice of scene-linear RGB values on a
   log2 shaper plus 4,096 random held-out colours. Rendered once with the feature renders' view
   transform (Filmic, look None, exposure 0, gamma 1) and once with "Standard" as a check of the
   target itself, both as 16-bit PNGs with dither off. The Filmic lattice *is* the fitted 3D LUT
   (trilinear in shaper space, `render.tonemap`); the held-out colours measure its error.
2. **Light units.** A diffuse plane (albedo 0.8) at the origin facing +Z is rendered linear (view
   "Raw", 32-bit EXR) under each reference light alone and under the world colour alone. Its
   radiance is ρ/π · E, so each render gives the factor that turns Blender's watts into radiometric
   units: point intensity I = k_point · P [W/sr]; area radiance L = k_area · P / A [W/(m² sr)]
   with A the scaled light area; world radiance L = k_world · colour.

Outputs: `render/data/filmic_lut.npz` (lattice, shaper, held-out error) and
`render/data/cycles_calibration.json` (light factors, errors, Blender version, settings).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
LUT_PATH = DATA / "filmic_lut.npz"
CALIBRATION_PATH = DATA / "cycles_calibration.json"

LATTICE = 33
HELD_OUT = 4096
SHAPER_LOG2_MIN = -10.0
"""Shaper u = (log2(x + c) - log2 c) / (log2(x_max + c) - log2 c), c = 2^SHAPER_LOG2_MIN; u(0) = 0."""
SHAPER_X_MAX = 16.0
ALBEDO = 0.8


def shaper_nodes(n: int = LATTICE) -> np.ndarray:
    """Scene-linear values of the lattice nodes along one axis (node 0 is exactly 0)."""
    c = 2.0 ** SHAPER_LOG2_MIN
    hi = math.log2(SHAPER_X_MAX + c)
    return 2.0 ** np.linspace(SHAPER_LOG2_MIN, hi, n) - c


def held_out_colours(n: int = HELD_OUT, seed: int = 3) -> np.ndarray:
    """Random test colours: log-uniform channels (half of them), saturated ones, greys and darks."""
    rng = np.random.default_rng(seed)
    a = 2.0 ** rng.uniform(-9, 4, size=(n // 2, 3))
    b = rng.random((n // 4, 3)) * rng.choice([0.05, 0.3, 1.0, 3.0], size=(n // 4, 1))
    b[np.arange(len(b)), rng.integers(0, 3, len(b))] *= 0.02  # strongly saturated
    g = np.repeat(2.0 ** rng.uniform(-9, 4, size=(n - len(a) - len(b), 1)), 3, axis=1)
    return np.concatenate([a, b, g])


# -- inside Blender --------------------------------------------------------------------------------
def _blender_target(out: Path) -> dict:
    import bpy

    from render import blender_scene

    nodes = shaper_nodes()
    lattice = np.stack(np.meshgrid(nodes, nodes, nodes, indexing="ij"), -1).reshape(-1, 3)
    colours = np.concatenate([lattice, held_out_colours()])
    side = int(math.ceil(math.sqrt(len(colours))))
    texels = np.zeros((side * side, 4), np.float32)
    texels[:, 3] = 1.0
    texels[:len(colours), :3] = colours

    blender_scene.reset()
    scene = bpy.context.scene
    img = bpy.data.images.new("target", side, side, alpha=True, float_buffer=True)
    img.colorspace_settings.name = "Non-Color"
    # Blender image rows run bottom-up; texel k sits at row k // side from the top of the render
    img.pixels.foreach_set(texels.reshape(side, side, 4)[::-1].ravel())
    mat = bpy.data.materials.new("target")
    mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    tex = nt.nodes.new("ShaderNodeTexImage")
    tex.image, tex.interpolation, tex.extension = img, "Closest", "EXTEND"
    em = nt.nodes.new("ShaderNodeEmission")
    outn = nt.nodes.new("ShaderNodeOutputMaterial")
    nt.links.new(tex.outputs["Color"], em.inputs["Color"])
    nt.links.new(em.outputs["Emission"], outn.inputs["Surface"])
    bpy.ops.mesh.primitive_plane_add(size=1.0)
    plane = bpy.context.active_object
    plane.data.materials.append(mat)
    cam_data = bpy.data.cameras.new("cam")
    cam_data.type, cam_data.ortho_scale = "ORTHO", 1.0
    cam = bpy.data.objects.new("cam", cam_data)
    cam.location = (0.0, 0.0, 2.0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    r = scene.render
    r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage = "CYCLES", side, side, 100
    r.film_transparent = False
    r.dither_intensity = 0.0
    r.image_settings.file_format, r.image_settings.color_mode, r.image_settings.color_depth = "PNG", "RGB", "16"
    c = scene.cycles
    c.device, c.samples, c.use_denoising, c.use_adaptive_sampling = "CPU", 1, False, False
    c.pixel_filter_type, c.filter_width = "BOX", 1.0
    scene.world = None
    vs = scene.view_settings
    result = {"side": side, "n_lattice": len(lattice), "n_held_out": len(colours) - len(lattice),
              "blender": bpy.app.version_string}
    for view in ("Filmic", "Standard"):
        vs.view_transform, vs.look, vs.exposure, vs.gamma = view, "None", 0.0, 1.0
        path = out / f"target_{view}.png"
        r.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        back = bpy.data.images.load(str(path))
        back.colorspace_settings.name = "Non-Color"
        px = np.array(back.pixels[:], dtype=np.float32).reshape(side, side, -1)[::-1, :, :3].reshape(-1, 3)
        np.save(out / f"target_{view}.npy", px[:len(colours)])
        result[f"view_{view}"] = vs.view_transform
    np.save(out / "target_in.npy", colours)
    return result


def _blender_lights(out: Path) -> dict:
    import bpy

    from render import blender_scene

    res = {}
    for case in ("Default_Light", "Top_Light", "world"):
        blender_scene.reset()
        scene = bpy.context.scene
        bpy.ops.mesh.primitive_plane_add(size=0.2)
        plane = bpy.context.active_object
        mat = bpy.data.materials.new("white")
        mat.use_nodes = True
        bsdf = mat.node_tree.nodes["Principled BSDF"]
        bsdf.inputs["Base Color"].default_value = (ALBEDO, ALBEDO, ALBEDO, 1.0)
        bsdf.inputs["Roughness"].default_value = 1.0
        bsdf.inputs["Specular IOR Level"].default_value = 0.0
        plane.data.materials.append(mat)
        blender_scene.add_lights()
        for obj in list(bpy.data.objects):
            if obj.type == "LIGHT" and obj.name != case:
                bpy.data.objects.remove(obj, do_unlink=True)
        if case == "world":
            blender_scene.ensure_world()
        cam_data = bpy.data.cameras.new("cam")
        cam_data.type, cam_data.ortho_scale = "ORTHO", 0.1
        cam = bpy.data.objects.new("cam", cam_data)
        cam.location = (0.0, 0.0, 1.0)
        scene.collection.objects.link(cam)
        scene.camera = cam
        r = scene.render
        r.engine, r.resolution_x, r.resolution_y, r.resolution_percentage = "CYCLES", 16, 16, 100
        r.image_settings.file_format, r.image_settings.color_depth = "OPEN_EXR", "32"
        c = scene.cycles
        c.device, c.samples, c.use_denoising, c.use_adaptive_sampling = "CPU", 1024, False, False
        c.diffuse_bounces = c.glossy_bounces = 1
        scene.view_settings.view_transform = "Raw"
        path = out / f"light_{case}.exr"
        r.filepath = str(path)
        bpy.ops.render.render(write_still=True)
        back = bpy.data.images.load(str(path))
        px = np.array(back.pixels[:], dtype=np.float64).reshape(16, 16, 4)[..., :3]
        res[case] = float(px.mean())
        if case != "world":
            light = bpy.data.objects[case]
            res[f"{case}_size"] = float(getattr(light.data, "size", 0.0))
            res[f"{case}_radius"] = float(getattr(light.data, "shadow_soft_size", 0.0))
    return res


def blender_main(out: str) -> None:
    out_p = Path(out)
    info = {"target": _blender_target(out_p), "lights": _blender_lights(out_p)}
    (out_p / "blender.json").write_text(json.dumps(info, indent=1))


# -- fitting (plain Python) ------------------------------------------------------------------------
def rect_irradiance(half: float, height: float, n: int = 2000) -> float:
    """Irradiance at the origin (normal +Z) from a unit-radiance Lambertian square of side 2*half
    centred `height` above it, facing down: ∫ cosθ_e cosθ_r / r² dA by the midpoint rule."""
    xs = (np.arange(n) + 0.5) / n * 2 * half - half
    x, y = np.meshgrid(xs, xs)
    r2 = x * x + y * y + height * height
    return float(np.sum(height * height / (r2 * r2)) * (2 * half / n) ** 2)


def fit(work: Path) -> tuple[dict, dict]:
    from render import tonemap
    from render.scene_spec import AREA_LIGHT_SIZE, WORLD_GREY

    info = json.loads((work / "blender.json").read_text())
    t = info["target"]
    colours = np.load(work / "target_in.npy")
    filmic = np.load(work / "target_Filmic.npy").astype(np.float64)
    standard = np.load(work / "target_Standard.npy").astype(np.float64)
    n_lat = t["n_lattice"]
    lut = filmic[:n_lat].reshape(LATTICE, LATTICE, LATTICE, 3).astype(np.float32)
    srgb = tonemap.srgb_oetf(np.clip(colours, 0, 1))
    target_check = float(np.abs(standard - srgb)[np.all(colours <= 1, axis=1)].max())
    held = colours[n_lat:]
    pred = tonemap.apply_lut(held, lut, shaper_nodes())
    err = np.abs(pred - filmic[n_lat:]) * 255.0
    lut_data = {"lut": lut, "nodes": shaper_nodes().astype(np.float64),
                "held_out_in": held.astype(np.float32), "held_out_out": filmic[n_lat:].astype(np.float32)}

    lights = info["lights"]
    # radiance of the plane = albedo/pi * E
    p = np.array([4.0, 1.0, 6.0])
    d2 = float(p @ p)
    e_point_per_intensity = (p[2] / math.sqrt(d2)) / d2
    k_point = lights["Default_Light"] / (ALBEDO / math.pi * e_point_per_intensity * 1000.0)
    if abs(lights["Top_Light_size"] - AREA_LIGHT_SIZE) > 1e-6:
        raise RuntimeError(f"Blender's area light size is {lights['Top_Light_size']}, not {AREA_LIGHT_SIZE}")
    half = lights["Top_Light_size"] * 100.0 / 2.0
    area = (2 * half) ** 2
    e_area_per_radiance = rect_irradiance(half, 10.0)
    k_area = lights["Top_Light"] / (ALBEDO / math.pi * e_area_per_radiance * 10000.0 / area)
    k_world = lights["world"] / (ALBEDO * WORLD_GREY)
    report = {
        "blender": t["blender"],
        "view_transform": t["view_Filmic"],
        "lut": {"lattice": LATTICE, "shaper": {"log2_min": SHAPER_LOG2_MIN, "x_max": SHAPER_X_MAX},
                "held_out": int(len(held)),
                "held_out_abs_err_8bit": {"mean": float(err.mean()), "p99": float(np.quantile(err, 0.99)),
                                          "max": float(err.max())},
                "standard_view_vs_srgb_max_abs": target_check},
        "lights": {
            "k_point_intensity_per_watt": k_point,
            "k_area_radiance_per_watt_per_m2": k_area,
            "k_world_radiance_per_colour": k_world,
            "measured_plane_radiance": {k: lights[k] for k in ("Default_Light", "Top_Light", "world")},
            "top_light_side_m": 2 * half,
            "note": "I = k_point*P [W/sr]; L = k_area*P/A [W/(m^2 sr)], A = scaled light area; "
                    "L_world = k_world*colour. 1/(4 pi) = 0.0796, 1/pi = 0.318.",
        },
    }
    return lut_data, report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blender", metavar="OUT", help=argparse.SUPPRESS)  # the child: render into OUT
    ap.add_argument("--work", default=None, help="keep the calibration renders in this folder")
    args = ap.parse_args(argv)
    if args.blender:
        blender_main(args.blender)
        return 0
    with tempfile.TemporaryDirectory(prefix="trellis-calib-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        subprocess.run([sys.executable, "-m", "render.calibration", "--blender", str(work)], check=True, env=env)
        lut_data, report = fit(work)
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(LUT_PATH, **lut_data)
    CALIBRATION_PATH.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
