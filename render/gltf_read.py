"""Reader of the canonical GLB (the form `render.canonical` writes) into plain numpy parts.

Why not trimesh: its glTF loader rounds material factors to 8 bits and drops COLOR_0 when a
primitive also has a texture; the canonical form is written by Blender's exporter, so the subset
of glTF 2.0 needed here is small and read exactly: triangle primitives (POSITION, NORMAL,
TEXCOORD_0, COLOR_0, indices), the node hierarchy (matrix or TRS), metallic-roughness materials
with their textures (embedded PNG/JPEG), alpha modes, normal and emissive maps.

Positions and normals come back in Blender's frame (+Z up), the frame of transforms.json: the
exporter's +Y-up conversion (x, y, z) -> (x, z, -y) is undone. Anything the reader meets but does
not carry (another primitive mode, a second UV set in use, texture transforms, a material
extension) is listed in `Asset.dropped`, so the render stage records it as a signal.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_COMPONENT = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_NORM = {5120: 127.0, 5121: 255.0, 5122: 32767.0, 5123: 65535.0}
Y_UP_TO_Z_UP = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
CARRIED_EXTENSIONS = {"KHR_materials_emissive_strength"}


class GltfError(ValueError):
    """The file is not a GLB this reader can use."""


@dataclass
class Texture:
    pixels: np.ndarray
    """(H, W, C) uint8 as stored (sRGB for colour maps, linear for data maps); row 0 = top."""
    wrap: str = "repeat"


@dataclass
class Material:
    name: str = "default"
    base_color: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    base_texture: Texture | None = None
    metallic: float = 1.0
    roughness: float = 1.0
    mr_texture: Texture | None = None
    """glTF metallicRoughness map: G = roughness, B = metallic (linear)."""
    normal_texture: Texture | None = None
    normal_scale: float = 1.0
    emissive: tuple[float, float, float] = (0.0, 0.0, 0.0)
    emissive_texture: Texture | None = None
    alpha_mode: str = "OPAQUE"
    alpha_cutoff: float = 0.5
    is_default: bool = False
    """No material in the file: Cycles' default surface applies (grey diffuse)."""


@dataclass
class Part:
    name: str
    positions: np.ndarray  # (V, 3) float32, Blender frame
    faces: np.ndarray  # (F, 3) uint32
    normals: np.ndarray | None = None  # (V, 3) float32
    uv: np.ndarray | None = None  # (V, 2) float32, glTF convention (0, 0) = top-left of the image
    colors: np.ndarray | None = None  # (V, 4) float32 linear
    material: Material = field(default_factory=Material)


@dataclass
class Asset:
    parts: list[Part]
    dropped: list[str] = field(default_factory=list)


def _chunks(data: bytes) -> tuple[dict, bytes]:
    if len(data) < 20 or data[:4] != b"glTF":
        raise GltfError("not a binary glTF (GLB) file")
    version, length = struct.unpack_from("<II", data, 4)
    if version != 2 or length > len(data):
        raise GltfError(f"unsupported GLB (version {version}, length {length} of {len(data)})")
    off, js, binary = 12, None, b""
    while off + 8 <= length:
        clen, ctype = struct.unpack_from("<II", data, off)
        chunk = data[off + 8: off + 8 + clen]
        if ctype == 0x4E4F534A:
            js = json.loads(chunk.decode("utf-8"))
        elif ctype == 0x004E4942:
            binary = chunk
        off += 8 + clen
    if js is None:
        raise GltfError("GLB without a JSON chunk")
    return js, binary


class _Reader:
    def __init__(self, gltf: dict, binary: bytes) -> None:
        self.g, self.bin = gltf, binary
        self.dropped: list[str] = []
        self._tex: dict[int, Texture] = {}

    def view(self, index: int) -> bytes:
        bv = self.g["bufferViews"][index]
        if bv.get("buffer", 0) != 0:
            raise GltfError("external buffers are not part of the canonical form")
        start = bv.get("byteOffset", 0)
        return self.bin[start:start + bv["byteLength"]]

    def accessor(self, index: int) -> np.ndarray:
        acc = self.g["accessors"][index]
        if "sparse" in acc:
            raise GltfError("sparse accessors are not part of the canonical form")
        dtype = np.dtype(_COMPONENT[acc["componentType"]])
        width = _WIDTH[acc["type"]]
        count = acc["count"]
        if "bufferView" not in acc:
            return np.zeros((count, width), np.float32)
        bv = self.g["bufferViews"][acc["bufferView"]]
        raw = self.view(acc["bufferView"])
        stride = bv.get("byteStride") or dtype.itemsize * width
        base = acc.get("byteOffset", 0)
        rows = np.ndarray((count, width), dtype=dtype, buffer=raw, offset=base, strides=(stride, dtype.itemsize))
        out = np.array(rows)
        if acc.get("normalized") and acc["componentType"] in _NORM:
            out = np.maximum(out.astype(np.float32) / _NORM[acc["componentType"]], -1.0)
        return out

    def texture(self, info: dict | None, what: str) -> Texture | None:
        if not info:
            return None
        if info.get("texCoord", 0) != 0:
            self.dropped.append(f"{what}: texture on UV set {info['texCoord']}")
        if "KHR_texture_transform" in info.get("extensions", {}):
            self.dropped.append(f"{what}: KHR_texture_transform")
        idx = info["index"]
        if idx not in self._tex:
            tex = self.g["textures"][idx]
            src = tex.get("source")
            if src is None:
                self.dropped.append(f"{what}: texture without a PNG/JPEG source")
                return None
            img = self.g["images"][src]
            if "bufferView" not in img:
                raise GltfError("images must be embedded in the canonical GLB")
            pixels = np.array(Image.open(io.BytesIO(self.view(img["bufferView"]))).convert("RGBA"))
            sampler = self.g.get("samplers", [{}])[tex["sampler"]] if "sampler" in tex else {}
            wrap = {33071: "clamp", 33648: "mirror"}.get(sampler.get("wrapS", 10497), "repeat")
            self._tex[idx] = Texture(pixels, wrap)
        return self._tex[idx]

    def material(self, index: int | None) -> Material:
        if index is None:
            return Material(name="none", is_default=True)
        m = self.g["materials"][index]
        for ext in m.get("extensions", {}):
            if ext not in CARRIED_EXTENSIONS:
                self.dropped.append(f"material {m.get('name', index)}: {ext}")
        pbr = m.get("pbrMetallicRoughness", {})
        strength = m.get("extensions", {}).get("KHR_materials_emissive_strength", {}).get("emissiveStrength", 1.0)
        normal = m.get("normalTexture")
        return Material(
            name=str(m.get("name", index)),
            base_color=tuple(float(x) for x in pbr.get("baseColorFactor", (1, 1, 1, 1))),
            base_texture=self.texture(pbr.get("baseColorTexture"), "baseColor"),
            metallic=float(pbr.get("metallicFactor", 1.0)),
            roughness=float(pbr.get("roughnessFactor", 1.0)),
            mr_texture=self.texture(pbr.get("metallicRoughnessTexture"), "metallicRoughness"),
            normal_texture=self.texture(normal, "normal"),
            normal_scale=float((normal or {}).get("scale", 1.0)),
            emissive=tuple(float(x) * float(strength) for x in m.get("emissiveFactor", (0, 0, 0))),
            emissive_texture=self.texture(m.get("emissiveTexture"), "emissive"),
            alpha_mode=str(m.get("alphaMode", "OPAQUE")),
            alpha_cutoff=float(m.get("alphaCutoff", 0.5)),
        )


def _node_matrix(node: dict) -> np.ndarray:
    if "matrix" in node:
        return np.array(node["matrix"], dtype=np.float64).reshape(4, 4).T  # column-major in glTF
    t = np.eye(4)
    t[:3, 3] = node.get("translation", (0, 0, 0))
    x, y, z, w = node.get("rotation", (0, 0, 0, 1))
    r = np.eye(4)
    r[:3, :3] = [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                 [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                 [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
    s = np.diag(list(node.get("scale", (1, 1, 1))) + [1.0])
    return t @ r @ s


def read_glb(path: str | Path) -> Asset:
    """Every triangle primitive of the default scene, world transforms applied, in Blender's frame."""
    gltf, binary = _chunks(Path(path).read_bytes())
    rd = _Reader(gltf, binary)
    scenes = gltf.get("scenes") or [{"nodes": list(range(len(gltf.get("nodes", []))))}]
    roots = scenes[gltf.get("scene", 0)].get("nodes", [])
    parts: list[Part] = []
    materials: dict[int | None, Material] = {}
    stack: list[tuple[int, np.ndarray]] = [(n, Y_UP_TO_Z_UP) for n in roots]
    while stack:
        ni, parent = stack.pop()
        node = gltf["nodes"][ni]
        world = parent @ _node_matrix(node)
        stack.extend((c, world) for c in node.get("children", []))
        if "mesh" not in node:
            continue
        mesh = gltf["meshes"][node["mesh"]]
        normal_m = np.linalg.inv(world[:3, :3]).T
        for pi, prim in enumerate(mesh.get("primitives", [])):
            if prim.get("mode", 4) != 4:
                rd.dropped.append(f"mesh {mesh.get('name', ni)}: primitive mode {prim.get('mode')}")
                continue
            attrs = prim["attributes"]
            pos = rd.accessor(attrs["POSITION"]).astype(np.float64)
            faces = (rd.accessor(prim["indices"]).reshape(-1, 3) if "indices" in prim
                     else np.arange(len(pos)).reshape(-1, 3)).astype(np.uint32)
            if np.linalg.det(world[:3, :3]) < 0:
                faces = faces[:, ::-1].copy()
            p = pos @ world[:3, :3].T + world[:3, 3]
            nrm = None
            if "NORMAL" in attrs:
                n = rd.accessor(attrs["NORMAL"]).astype(np.float64) @ normal_m.T
                nrm = (n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)).astype(np.float32)
            uv = rd.accessor(attrs["TEXCOORD_0"]).astype(np.float32) if "TEXCOORD_0" in attrs else None
            col = None
            if "COLOR_0" in attrs:
                col = rd.accessor(attrs["COLOR_0"]).astype(np.float32)
                if col.shape[1] == 3:
                    col = np.concatenate([col, np.ones((len(col), 1), np.float32)], 1)
            mi_ = prim.get("material")
            if mi_ not in materials:
                materials[mi_] = rd.material(mi_)
            parts.append(Part(f"{mesh.get('name', ni)}_{pi}", p.astype(np.float32), faces, nrm, uv, col, materials[mi_]))
    if not parts:
        raise GltfError("the GLB holds no triangle geometry")
    return Asset(parts, sorted(set(rd.dropped)))


def meta(path: str | Path) -> dict[str, Any]:
    """The `asset` block and extras of a GLB (the canonical stage stores its record there too)."""
    gltf, _ = _chunks(Path(path).read_bytes())
    return {"asset": gltf.get("asset", {}), "extras": gltf.get("extras", {})}
