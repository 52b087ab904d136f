"""The trimesh normalization stage: raw asset -> normalized triangle mesh in [-0.5, 0.5]^3.

The Blender render stage writes the same kind of mesh (`renders/<sha>/mesh.ply`); both apply the one
rule in `encode.normalize`. Files are untrusted, so this stage runs isolated (killable on a hang).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catalogs import layout
from catalogs.stage import (
    AssetTask, BadInput, CorruptFile, EmptyGeometry, Resources, Stage, StageContext, StageResult, UnsupportedFormat,
)
from encode.normalize import normalization_transform, scene_bounds

TRIMESH_FORMATS = {"glb", "gltf", "obj", "ply", "stl", "off", "dae", "3mf"}


class NonFiniteGeometry(BadInput):
    error_type = "non_finite_geometry"


def load_scene(path: Path, fmt: str):
    """Load any trimesh-readable asset as a Scene, with typed errors for bad files."""
    import trimesh

    fmt = fmt.lower()
    if fmt not in TRIMESH_FORMATS:
        raise UnsupportedFormat(f"format {fmt!r} is not a mesh format this stage reads ({sorted(TRIMESH_FORMATS)})")
    if path.stat().st_size == 0:
        raise EmptyGeometry("file is empty")
    try:
        scene = trimesh.load(str(path), file_type=fmt, force="scene", process=False)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, AssertionError, UnicodeDecodeError, EOFError,
            OSError) as exc:  # trimesh's parsers signal malformed files with any of these (e.g. short glTF buffers)
        raise CorruptFile(f"cannot parse {fmt} file: {type(exc).__name__}: {exc}") from None
    meshes = [g for g in scene.geometry.values() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    if not meshes:
        raise EmptyGeometry("no triangle geometry in the file")
    return scene


def normalized_mesh(scene):
    """(vertices float64 (V,3), faces int64 (F,3), scale, offset) in the normalized frame."""
    import trimesh

    lo, hi = scene_bounds(scene)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise NonFiniteGeometry("vertex coordinates are not finite")
    try:
        s, t = normalization_transform(lo, hi)
    except ValueError as exc:
        raise EmptyGeometry(str(exc)) from None
    meshes = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if isinstance(geom, trimesh.Trimesh) and len(geom.faces):
            meshes.append((trimesh.transform_points(geom.vertices, transform), np.asarray(geom.faces)))
    offsets = np.cumsum([0] + [len(v) for v, _ in meshes[:-1]])
    vertices = np.concatenate([v for v, _ in meshes]) * s + t
    faces = np.concatenate([f + o for (_, f), o in zip(meshes, offsets)])
    if not np.all(np.isfinite(vertices)):
        raise NonFiniteGeometry("vertex coordinates are not finite")
    area = np.linalg.norm(np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]]), axis=1)
    if not np.any(area > 0):
        raise EmptyGeometry("every face has zero area")
    return vertices, faces, s, t


def mesh_ply_bytes(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """Binary PLY with float x,y,z and `list uchar uint` triangles, as consumers of mesh.ply expect."""
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        f"element face {len(faces)}\nproperty list uchar uint vertex_indices\nend_header\n"
    ).encode("ascii")
    v = np.ascontiguousarray(vertices, dtype="<f4").tobytes()
    f = np.empty(len(faces), dtype=[("n", "u1"), ("idx", "<u4", (3,))])
    f["n"], f["idx"] = 3, faces
    return header + v + f.tobytes()


class NormalizeStage(Stage):
    name = "normalize"
    upstream = ("ingest",)
    isolated = True
    resources = Resources(num_cpus=0.5)
    timeout_s = 300.0

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        ref = task.input("ingest")
        fmt = ref.metrics.get("format") or task.asset.get("format") or ""
        with ctx.store.local_copy(ctx.store.rel(ref.uri)) as path:
            scene = load_scene(Path(path), fmt)
        vertices, faces, s, t = normalized_mesh(scene)
        rel = layout.meshes(task.sha256)
        n = ctx.store.write_bytes(rel, mesh_ply_bytes(vertices, faces))
        return StageResult(uri=ctx.store.uri(rel), bytes=n, metrics={
            "scale": s, "offset": [float(x) for x in t], "num_vertices": int(len(vertices)), "num_faces": int(len(faces)),
            "num_meshes": len(scene.geometry),
        })
