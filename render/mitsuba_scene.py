"""The reference scene of DATA_FORMATS.md §3 in Mitsuba 3: asset parts, lights, world, cameras.

Units come from `render/data/cycles_calibration.json`, measured by `render.calibration` in the
Blender build the reference renders use: a point light of P watts has intensity k_point*P W/sr
(measured 1/(4 pi)), an area light of P watts and scaled area A has radiance k_area*P/A (measured
1/pi), the world colour is its radiance (k_world = 1).

- Default_Light: `point` at (4, 1, 6), 1000 W.
- Top_Light: a 25 m square (Blender's default 0.25 m area light at object scale 100) at z = 10,
  10000 W, emitting down (-Z), as a `rectangle` with an `area` emitter and a `null` BSDF (lights
  are not seen by the camera and cast no shadow in Cycles; the integrator passes through them).
- Bottom_Light: the same at z = -10, 1000 W, 0.25 m, also emitting -Z, i.e. away from the object
  (G3). Kept for fidelity with sampling weight 0: it is never picked by light sampling, and BSDF
  rays that happen to reach its emitting side still count it (it contributes nothing in practice).
- World: `constant` emitter with the factory grey; hidden from the camera by the integrator.

Materials (glTF metallic-roughness, as the canonical GLB carries them) map onto Mitsuba's
`principled` BSDF (base colour, metallic, roughness; specular 0.5 = IOR 1.5, as Blender's
Principled defaults), wrapped in `twosided` (Cycles shades back faces), `normalmap` when a normal
texture is present, and `mask` for BLEND/MASK alpha. Vertex colours multiply the base colour (glTF);
a part with both vertex colours and a base-colour texture keeps the texture only (recorded).
Primitives without a material get Cycles' default surface, a 0.8 grey diffuse.

Cameras: one `perspective` sensor per view inside one `batch` sensor (one launch renders all its
views side by side on one film); the Blender camera frame (+X right, +Y up, looking -Z) maps to
Mitsuba's (+X left, +Y up, looking +Z) by flipping X and Z.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from render import calibration
from render.gltf_read import Asset, Material, Part
from render.scene_spec import AREA_LIGHT_SIZE, LIGHTS, WORLD_GREY, Light

DEFAULT_GREY = 0.8
BLACKMAN_HARRIS_SIGMA = 0.13850731308200082
"""Standard deviation of Cycles' Blackman-Harris pixel filter per pixel of filter width."""
EMITTER_WEIGHTS = {"Top_Light": 1.0, "Default_Light": 1.0, "world": 1.0, "Bottom_Light": 0.0}
"""Sampling weight 0 = never light-sampled (the integrator samples every other light at every vertex)."""


@functools.lru_cache(maxsize=1)
def light_units() -> dict[str, float]:
    data = json.loads(calibration.CALIBRATION_PATH.read_text())["lights"]
    return {"point": data["k_point_intensity_per_watt"], "area": data["k_area_radiance_per_watt_per_m2"],
            "world": data["k_world_radiance_per_colour"]}


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


# -- materials ---------------------------------------------------------------------------------------
def _bitmap(mi, arr: np.ndarray, wrap: str) -> dict[str, Any]:
    return {"type": "bitmap", "bitmap": mi.Bitmap(np.ascontiguousarray(arr, dtype=np.float32)), "raw": True,
            "filter_type": "bilinear", "wrap_mode": wrap}


def _colour(mi, m: Material, part: Part, notes: list[str]):
    factor = np.asarray(m.base_color[:3], np.float32)
    if m.base_texture is not None:
        if part.colors is not None:
            notes.append(f"{part.name}: vertex colours dropped (base-colour texture present)")
        lin = srgb_to_linear(m.base_texture.pixels[..., :3] / 255.0) * factor
        return _bitmap(mi, lin, m.base_texture.wrap)
    if part.colors is not None:
        return {"type": "mesh_attribute", "name": "vertex_color"}
    return {"type": "rgb", "value": [float(x) for x in factor]}


def _opacity(mi, m: Material, part: Part):
    """Alpha as a float texture (None when the surface is opaque)."""
    if m.alpha_mode == "OPAQUE":
        return None
    a = float(m.base_color[3])
    if m.base_texture is not None:
        tex = m.base_texture.pixels[..., 3:4] / 255.0 * a
        if m.alpha_mode == "MASK":
            tex = (tex >= m.alpha_cutoff).astype(np.float32)
        if np.all(tex >= 1.0):
            return None
        return _bitmap(mi, tex, m.base_texture.wrap)
    if part.colors is not None and np.any(part.colors[:, 3] < 1.0):
        return {"type": "mesh_attribute", "name": "vertex_alpha"}
    if m.alpha_mode == "MASK":
        a = 1.0 if a >= m.alpha_cutoff else 0.0
    return None if a >= 1.0 else a


def bsdf_dict(mi, part: Part, notes: list[str]) -> dict[str, Any]:
    m = part.material
    if m.is_default:
        return {"type": "twosided", "material": {"type": "diffuse", "reflectance": {"type": "rgb",
                                                                                   "value": [DEFAULT_GREY] * 3}}}
    principled: dict[str, Any] = {"type": "principled", "base_color": _colour(mi, m, part, notes), "specular": 0.5}
    if m.mr_texture is not None:
        mr = m.mr_texture.pixels / 255.0
        principled["roughness"] = _bitmap(mi, mr[..., 1:2] * m.roughness, m.mr_texture.wrap)
        principled["metallic"] = _bitmap(mi, mr[..., 2:3] * m.metallic, m.mr_texture.wrap)
    else:
        principled["roughness"] = float(m.roughness)
        principled["metallic"] = float(m.metallic)
    bsdf: dict[str, Any] = principled
    if m.normal_texture is not None:
        n = m.normal_texture.pixels[..., :3] / 255.0
        if m.normal_scale != 1.0:
            v = (n * 2 - 1) * np.array([m.normal_scale, m.normal_scale, 1.0])
            v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-8)
            n = v * 0.5 + 0.5
        bsdf = {"type": "normalmap", "normalmap": _bitmap(mi, n, m.normal_texture.wrap), "bsdf": bsdf}
    bsdf = {"type": "twosided", "material": bsdf}
    alpha = _opacity(mi, m, part)
    if alpha is not None:
        bsdf = {"type": "mask", "opacity": alpha, "material": bsdf}
    return bsdf


def _emitter(mi, m: Material) -> dict[str, Any] | None:
    if m.emissive_texture is not None:
        lin = srgb_to_linear(m.emissive_texture.pixels[..., :3] / 255.0) * np.asarray(m.emissive, np.float32)
        return {"type": "area", "radiance": _bitmap(mi, lin, m.emissive_texture.wrap)} if lin.max() > 0 else None
    if max(m.emissive) > 0:
        return {"type": "area", "radiance": {"type": "rgb", "value": [float(x) for x in m.emissive]}}
    return None


def mesh(mi, part: Part, notes: list[str]):
    """An in-memory `mi.Mesh` with its BSDF (and emitter for emissive materials)."""
    props = mi.Properties()
    props["bsdf"] = mi.load_dict(bsdf_dict(mi, part, notes))
    em = _emitter(mi, part.material)
    if em is not None:
        props["emitter"] = mi.load_dict(em)
    m = mi.Mesh(part.name, len(part.positions), len(part.faces), props=props,
                has_vertex_normals=part.normals is not None, has_vertex_texcoords=part.uv is not None)
    params = mi.traverse(m)
    params["vertex_positions"] = mi.Float(np.ascontiguousarray(part.positions, np.float32).ravel())
    params["faces"] = mi.UInt32(np.ascontiguousarray(part.faces, np.uint32).ravel())
    if part.normals is not None:
        params["vertex_normals"] = mi.Float(np.ascontiguousarray(part.normals, np.float32).ravel())
    if part.uv is not None:
        params["vertex_texcoords"] = mi.Float(np.ascontiguousarray(part.uv, np.float32).ravel())
    params.update()
    if part.colors is not None:
        rgb = part.colors[:, :3] * np.asarray(part.material.base_color[:3], np.float32)
        m.add_attribute("vertex_color", 3, mi.Float(np.ascontiguousarray(rgb, np.float32).ravel()))
        m.add_attribute("vertex_alpha", 1, mi.Float(np.ascontiguousarray(
            part.colors[:, 3] * part.material.base_color[3], np.float32)))
    return m


# -- lights and world ----------------------------------------------------------------------------------
def _area_light(mi, spec: Light, weight: float) -> dict[str, Any]:
    T = mi.ScalarTransform4f
    side = AREA_LIGHT_SIZE * spec.scale
    # rectangle: [-1, 1]^2 with normal +Z; turned over so it emits along -Z like Blender's area light
    to_world = (T().translate(list(spec.location)) @ T().rotate([1.0, 0.0, 0.0], 180.0)
                @ T().scale([side / 2, side / 2, 1.0]))
    radiance = light_units()["area"] * spec.watts / (side * side)
    return {"type": "rectangle", "to_world": to_world, "bsdf": {"type": "null"},
            "emitter": {"type": "area", "radiance": {"type": "rgb", "value": [radiance] * 3}, "sampling_weight": weight}}


def lights(mi, world_rgb: Sequence[float] = (WORLD_GREY,) * 3) -> dict[str, Any]:
    """The reference lights and world as Mitsuba plugins, keyed by lower-case light name."""
    k = light_units()
    out: dict[str, Any] = {}
    for spec in LIGHTS:
        weight = EMITTER_WEIGHTS[spec.name]
        if spec.kind == "POINT":
            out[spec.name.lower()] = {"type": "point", "position": list(spec.location), "sampling_weight": weight,
                                      "intensity": {"type": "rgb", "value": [k["point"] * spec.watts] * 3}}
        else:
            out[spec.name.lower()] = _area_light(mi, spec, weight)
    out["world"] = {"type": "constant", "sampling_weight": EMITTER_WEIGHTS["world"],
                    "radiance": {"type": "rgb", "value": [k["world"] * float(c) for c in world_rgb]}}
    return out


# -- film and cameras ---------------------------------------------------------------------------------
def rfilter(pixel_filter: str, width: float) -> dict[str, Any]:
    """Mitsuba's reconstruction filter closest to Cycles' (same standard deviation; box = box)."""
    if pixel_filter == "BOX":
        return {"type": "box"}
    sigma = BLACKMAN_HARRIS_SIGMA * width if pixel_filter == "BLACKMAN_HARRIS" else width / 12.0
    return {"type": "gaussian", "stddev": float(sigma)}


def mitsuba_to_world(mi, c2w: np.ndarray):
    m = np.asarray(c2w, dtype=np.float64) @ np.diag([-1.0, 1.0, -1.0, 1.0])
    return mi.ScalarTransform4f(m.tolist())


def batch_sensor(mi, c2ws: Sequence[np.ndarray], fovs: Sequence[float], resolution: int, spp: int, seed: int,
                 pixel_filter: str, filter_width: float, sampler: str = "independent", aovs: bool = False):
    sensor: dict[str, Any] = {
        "type": "batch",
        "film": {"type": "hdrfilm", "width": resolution * len(c2ws), "height": resolution,
                 "pixel_format": "rgba", "component_format": "float32",
                 "rfilter": rfilter(pixel_filter, filter_width)},
        "sampler": {"type": sampler, "sample_count": int(spp), "seed": int(seed)},
    }
    for i, (m, fov) in enumerate(zip(c2ws, fovs)):
        sensor[f"view_{i:04d}"] = {"type": "perspective", "fov": math.degrees(float(fov)), "fov_axis": "x",
                                   "near_clip": 0.1, "far_clip": 100.0, "to_world": mitsuba_to_world(mi, m)}
    return mi.load_dict(sensor)


def scene(mi, asset: Asset, integrator: dict[str, Any],
          world_rgb: Sequence[float] = (WORLD_GREY,) * 3) -> tuple[Any, list[str]]:
    """(mi.Scene, notes): the asset's meshes, the reference lights and world, the integrator."""
    notes: list[str] = list(asset.dropped)
    d: dict[str, Any] = {"type": "scene", "integrator": integrator}
    for i, part in enumerate(asset.parts):
        d[f"part_{i:05d}"] = mesh(mi, part, notes)
    d.update(lights(mi, world_rgb))
    return mi.load_dict(d), notes
