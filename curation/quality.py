"""Quality signals of a mesh, exact and near duplicates.

`QualityStage` (name "quality", upstream ingest) loads the ingested file with trimesh (packages are
unpacked to their entry first) and returns metrics that SQL can filter on, e.g.

    SELECT sha256 FROM artifacts WHERE stage = 'quality' AND status = 'ok'
      AND CAST(metrics->>'faces' AS BIGINT) BETWEEN 100 AND 2000000
      AND CAST(metrics->>'textureless_fraction' AS DOUBLE) < 0.5

Metrics: `faces`, `vertices` (instances counted), `geometries`, `components` (connected face
components; None above `max_faces_for_components`), `textures` (distinct images), `textured_fraction`
/ `textureless_fraction` (faces with neither a texture image nor vertex/face colours),
`has_transparency` / `transparent_fraction`, `bbox_extents`, `bbox_aspect` (longest / shortest
extent), `file_size`, `content_sha256` (of the model file itself; for packages its entry).

Formats trimesh cannot read (.blend, .fbx, .usd*) give `unsupported_format`.

`exact_duplicates(catalog)` relates assets whose model bytes are identical although their ids differ
(e.g. 3D-FUTURE, whose id hashes the preview image); `record_cross_source` (in subsets) relates
assets listed by several sources. `near_duplicates(catalog, store, threshold)` relates assets whose
CLIP embeddings (from the aesthetic stage) have cosine similarity >= threshold. Both write
`asset_relations` rows (sha_a < sha_b) and delete nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catalogs.stage import (
    AssetTask,
    CorruptFile,
    EmptyGeometry,
    Resources,
    Stage,
    StageContext,
    StageResult,
    UnsupportedFormat,
)

TRIMESH_FORMATS = {"glb", "gltf", "obj", "ply", "stl", "off", "3mf", "dae"}
UNSUPPORTED = {"blend", "fbx", "usd", "usda", "usdc", "usdz", "abc", "max", "3ds"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def _material_info(visual) -> tuple[bool, bool, int | None, list[int]]:
    """(has_texture_image, has_colours, alpha_min_255, image ids) of a trimesh visual."""
    images: list[int] = []
    has_tex = has_col = False
    alpha_min: int | None = None
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        mat = getattr(visual, "material", None)
        for attr in ("baseColorTexture", "image", "emissiveTexture"):
            img = getattr(mat, attr, None)
            if img is not None:
                images.append(id(img))
                if attr != "emissiveTexture":
                    has_tex = True
                    if getattr(img, "mode", "") in ("RGBA", "LA", "PA"):
                        try:
                            a = np.asarray(img.getchannel("A"))
                            alpha_min = min(alpha_min if alpha_min is not None else 255, int(a.min()))
                        except Exception:  # noqa: BLE001
                            pass
        factor = getattr(mat, "baseColorFactor", None)
        if factor is None:
            factor = getattr(mat, "main_color", None)
        if factor is not None:
            f = np.asarray(factor, dtype=np.float64).ravel()
            if f.size >= 4:
                a = f[3] if f.max() > 1.0 else f[3] * 255
                alpha_min = min(alpha_min if alpha_min is not None else 255, int(round(a)))
        if getattr(mat, "alphaMode", None) in ("BLEND",) and alpha_min is None:
            alpha_min = 254
    elif kind in ("vertex", "face"):
        has_col = True
        try:
            cols = visual.vertex_colors if kind == "vertex" else visual.face_colors
            if len(cols) and cols.shape[1] == 4:
                alpha_min = int(np.min(cols[:, 3]))
            if len(cols) and np.all(cols == cols[0]):
                has_col = False  # one uniform colour is not "coloured"
        except Exception:  # noqa: BLE001
            pass
    return has_tex, has_col, alpha_min, images


def mesh_signals(path: Path, fmt: str | None = None, max_faces_for_components: int = 2_000_000) -> dict[str, Any]:
    import trimesh

    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt in UNSUPPORTED or fmt not in TRIMESH_FORMATS:
        raise UnsupportedFormat(f"quality signals need a trimesh-readable mesh; {fmt!r} is not one")
    try:
        loaded = trimesh.load(str(path), file_type=fmt, force=None, process=False)
    except Exception as exc:  # noqa: BLE001
        raise CorruptFile(f"trimesh cannot read {path.name}: {type(exc).__name__}: {exc}") from None
    scene = loaded if isinstance(loaded, trimesh.Scene) else trimesh.Scene(loaded)
    counts: dict[str, int] = {}
    for node in scene.graph.nodes_geometry:
        _, gname = scene.graph[node]
        counts[gname] = counts.get(gname, 0) + 1
    faces = verts = comps = 0
    comps_known = True
    textured = transparent = 0
    images: set[int] = set()
    n_geoms = 0
    for gname, geom in scene.geometry.items():
        if not isinstance(geom, trimesh.Trimesh):
            continue
        n = counts.get(gname, 0) or 1
        nf = len(geom.faces)
        n_geoms += 1
        faces += nf * n
        verts += len(geom.vertices) * n
        if comps_known and nf and faces <= max_faces_for_components:
            labels = trimesh.graph.connected_component_labels(geom.face_adjacency, node_count=nf)
            comps += int(len(np.unique(labels))) * n
        elif nf:
            comps_known = False
        has_tex, has_col, alpha_min, imgs = _material_info(geom.visual)
        images.update(imgs)
        if has_tex or has_col:
            textured += nf * n
        if alpha_min is not None and alpha_min < 255:
            transparent += nf * n
    if faces == 0:
        raise EmptyGeometry(f"{path.name} has no triangles")
    bounds = scene.bounds
    ext = (bounds[1] - bounds[0]).tolist() if bounds is not None else [0.0, 0.0, 0.0]
    pos = [e for e in ext if e > 0]
    return {
        "faces": int(faces), "vertices": int(verts), "geometries": n_geoms,
        "components": int(comps) if comps_known else None,
        "textures": len(images),
        "textured_fraction": textured / faces, "textureless_fraction": 1.0 - textured / faces,
        "has_transparency": transparent > 0, "transparent_fraction": transparent / faces,
        "bbox_extents": [float(e) for e in ext],
        "bbox_aspect": (max(ext) / min(pos)) if len(pos) == 3 else None,
        "format": fmt,
    }


class QualityStage(Stage):
    """Params: `max_faces_for_components` (component counting is skipped above it)."""

    name = "quality"
    version = "1"
    upstream = ("ingest",)
    resources = Resources(num_cpus=1.0)
    timeout_s = 900.0

    @dataclass(frozen=True)
    class Params:
        max_faces_for_components: int = 2_000_000

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        from curation.package import is_package, open_asset, read_manifest

        ref = task.input("ingest")
        rel = ctx.store.rel(ref.uri)
        with ctx.store.local_copy(rel) as local:
            local = Path(local)
            size = local.stat().st_size
            file_sha = _sha256(local)
            fmt = str(task.asset.get("format") or local.suffix.lstrip(".")).lower()
            if is_package(local):
                fmt = read_manifest(local).get("format") or fmt
                with open_asset(local) as entry:
                    content_sha = _sha256(entry)
                    m = mesh_signals(entry, entry.suffix.lstrip("."), self.params.max_faces_for_components)
            else:
                content_sha = file_sha
                m = mesh_signals(local, fmt if fmt in TRIMESH_FORMATS | UNSUPPORTED else None,
                                 self.params.max_faces_for_components)
        m.update(file_size=size, file_sha256=file_sha, content_sha256=content_sha)
        return StageResult(uri=None, bytes=0, metrics=m)


# -- duplicates ------------------------------------------------------------------------------------
def _write_relations(catalog, rows: list[tuple[str, str, str, float | None]]) -> int:
    if not rows:
        return 0
    import pyarrow as pa

    t = pa.table({"sha_a": [r[0] for r in rows], "sha_b": [r[1] for r in rows], "relation": [r[2] for r in rows],
                  "score": pa.array([r[3] for r in rows], pa.float64())})
    with catalog.connect() as con:
        con.register("incoming_rel", t)
        con.execute("INSERT OR REPLACE INTO asset_relations SELECT sha_a, sha_b, relation, score FROM incoming_rel")
    return len(rows)


def exact_duplicates(catalog) -> int:
    """Relate assets with identical model bytes but different ids ('exact_duplicate', score 1.0):
    the content hash measured by the quality stage against other assets' ids and content hashes."""
    rows = catalog.query("""
        WITH q AS (
            SELECT sha256, json_extract_string(metrics, '$.content_sha256') AS content
            FROM artifacts WHERE stage = 'quality' AND status = 'ok'
        ), keyed AS (
            SELECT sha256, content AS k FROM q WHERE content IS NOT NULL
            UNION SELECT sha256, sha256 AS k FROM assets
        )
        SELECT DISTINCT least(a.sha256, b.sha256) AS sha_a, greatest(a.sha256, b.sha256) AS sha_b
        FROM keyed a JOIN keyed b ON a.k = b.k AND a.sha256 < b.sha256
    """).to_pylist()
    return _write_relations(catalog, [(r["sha_a"], r["sha_b"], "exact_duplicate", 1.0) for r in rows])


def near_duplicates(catalog, store, threshold: float = 0.95, variant: str | None = None, block: int = 4096) -> int:
    """Relate assets whose asset-level CLIP embeddings have cosine >= `threshold` ('near_duplicate',
    score = cosine). Brute force in blocks: fine up to ~10^5 assets on one machine."""
    from curation.aesthetic import load_embedding

    sql = "SELECT sha256, uri FROM artifacts WHERE stage = 'aesthetic' AND status = 'ok' AND uri IS NOT NULL"
    params: list[Any] = []
    if variant:
        sql += " AND variant = ?"
        params.append(variant)
    arts = catalog.query(sql + " ORDER BY sha256", params).to_pylist()
    if len(arts) < 2:
        return 0
    shas = [a["sha256"] for a in arts]
    emb = np.stack([load_embedding(store, a["uri"]) for a in arts]).astype(np.float32)
    rows: list[tuple[str, str, str, float | None]] = []
    for i in range(0, len(shas), block):
        sims = emb[i:i + block] @ emb.T
        ii, jj = np.nonzero(sims >= threshold)
        for a, b in zip(ii.tolist(), jj.tolist()):
            a += i
            if a < b:
                rows.append((shas[a], shas[b], "near_duplicate", float(sims[a - i, b])))
    return _write_relations(catalog, rows)


def relations(catalog, relation: str | None = None) -> list[Mapping[str, Any]]:
    sql = "SELECT * FROM asset_relations" + (" WHERE relation = ?" if relation else "") + " ORDER BY sha_a, sha_b"
    return catalog.query(sql, [relation] if relation else None).to_pylist()


__all__ = ["QualityStage", "mesh_signals", "exact_duplicates", "near_duplicates", "relations"]
_ = json
