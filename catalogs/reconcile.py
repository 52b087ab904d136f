"""Rebuild catalog rows from the store alone, and audit that catalog and store agree.

Sources of truth in the store, in order: Parquet snapshots (`catalog/snapshot/`), the append-only
record logs the driver writes with every upsert batch (`catalog/records/`), then the artifact files
themselves. A record whose file is gone is dropped; a file without any record is adopted with an
unknown fingerprint, so the planner treats it as stale rather than trusting it.
"""

from __future__ import annotations

import io
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from catalogs import layout
from catalogs.catalog import ARTIFACT_FIELDS, ASSET_FIELDS, ASSET_SCHEMA, Catalog, artifact_table, utcnow
from catalogs.store import Store, is_temporary

_SHA = r"(?P<sha>[0-9a-f]{64})"
# (stage, variant group or None, pattern of the file that proves the artifact, uri is dir?)
ARTIFACT_FILES: list[tuple[str, re.Pattern[str], bool]] = [
    ("ingest", re.compile(rf"^raw/(?P<source>[^/]+)/{_SHA}\.(?P<ext>[a-z0-9]+)$"), False),
    ("normalize", re.compile(rf"^meshes/{_SHA}\.ply$"), False),
    ("render", re.compile(rf"^renders/{_SHA}/transforms\.json$"), True),
    ("render_cond", re.compile(rf"^renders_cond/{_SHA}/transforms\.json$"), True),
    ("voxelize", re.compile(rf"^voxels/{_SHA}\.ply$"), False),
    ("features", re.compile(rf"^features/(?P<variant>[^/]+)/{_SHA}\.npz$"), False),
    ("ss_latent", re.compile(rf"^ss_latents/(?P<variant>[^/]+)/{_SHA}\.npz$"), False),
    ("slat", re.compile(rf"^latents/(?P<variant>[^/]+)/{_SHA}\.npz$"), False),
]


@dataclass
class StoreArtifact:
    sha256: str
    stage: str
    variant: str
    rel: str
    source: str | None = None
    ext: str | None = None


def scan(store: Store) -> Iterator[StoreArtifact]:
    """Every published artifact in the store layout."""
    for rel in store.walk_files():
        for stage, pattern, is_dir in ARTIFACT_FILES:
            m = pattern.match(rel)
            if m:
                g = m.groupdict()
                yield StoreArtifact(g["sha"], stage, g.get("variant") or "", posixpath.dirname(rel) if is_dir else rel,
                                    g.get("source"), g.get("ext"))
                break


def _read_parquets(store: Store, prefix: str) -> pa.Table | None:
    tables = [pq.read_table(io.BytesIO(store.read_bytes(rel))) for rel in store.walk_files(prefix) if rel.endswith(".parquet")]
    tables = [t for t in tables if t.num_rows]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def ply_vertex_count(header: bytes) -> int:
    """Vertex count from a PLY header, so reconcile can restore `num_voxels` without the body."""
    end = header.find(b"end_header")
    for line in header[:end].decode("ascii", "replace").splitlines():
        if line.startswith("element vertex"):
            return int(line.split()[2])
    raise ValueError("no vertex element in PLY header")


def _file_metrics(store: Store, art: StoreArtifact) -> dict:
    if art.stage == "voxelize":
        with store.open(art.rel) as f:
            return {"num_voxels": ply_vertex_count(f.read(4096))}
    if art.stage == "ingest":
        return {"local_path": art.rel, "format": art.ext, "size_bytes": store.size(art.rel), "sha256": art.sha256}
    return {}


def reconcile(store: Store, catalog: Catalog) -> dict[str, int]:
    found = {(a.sha256, a.stage, a.variant): a for a in scan(store)}
    summary = {"files": len(found), "assets": 0, "records": 0, "adopted": 0, "dropped": 0}

    assets = _read_parquets(store, f"{layout.CATALOG_DIR}/snapshot/assets.parquet")
    asset_rows = {r["sha256"]: r for r in (assets.select(list(ASSET_FIELDS)).to_pylist() if assets else [])}
    for a in found.values():
        if a.stage == "ingest" and a.sha256 not in asset_rows:
            asset_rows[a.sha256] = {"sha256": a.sha256, "source": a.source, "format": a.ext}
    catalog.upsert_assets(pa.Table.from_pylist(list(asset_rows.values()), schema=ASSET_SCHEMA))
    summary["assets"] = len(asset_rows)

    logs = [t for t in (_read_parquets(store, f"{layout.CATALOG_DIR}/snapshot/artifacts.parquet"),
                        _read_parquets(store, f"{layout.CATALOG_DIR}/records")) if t is not None]
    latest: dict[tuple[str, str, str], dict] = {}
    if logs:
        table = pa.concat_tables([t.select(list(ARTIFACT_FIELDS)) for t in logs], promote_options="default")
        table = table.sort_by([("updated_at", "ascending")])
        for r in table.to_pylist():
            latest[(r["sha256"], r["stage"], r["variant"])] = r
    rows = []
    for key, r in latest.items():
        if r["status"] == "ok" and r["uri"] and key not in found:
            summary["dropped"] += 1  # the record outlived its file
            continue
        if r["sha256"] in asset_rows:
            rows.append(r)
    for key, a in found.items():
        if key in latest or a.sha256 not in asset_rows:
            continue
        rows.append({"sha256": a.sha256, "stage": a.stage, "variant": a.variant, "fingerprint": None, "status": "ok",
                     "uri": store.uri(a.rel), "metrics": _file_metrics(store, a), "attempts": 1,
                     "updated_at": utcnow(), "run_id": "reconcile"})
        summary["adopted"] += 1
    summary["records"] = catalog.upsert_artifacts(artifact_table(rows)) if rows else 0
    return summary


@dataclass
class AuditReport:
    missing_files: list[tuple[str, str, str]] = field(default_factory=list)
    unrecorded_files: list[tuple[str, str, str]] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_files or self.unrecorded_files or self.temporaries)


def audit(store: Store, catalog: Catalog) -> AuditReport:
    """Does every `ok` row have its file, every artifact file an `ok` row, and no temporary show?"""
    found = {(a.sha256, a.stage, a.variant) for a in scan(store)}
    rows = catalog.query("SELECT sha256, stage, variant, uri FROM artifacts WHERE status = 'ok' AND uri IS NOT NULL")
    recorded = set(zip(*(rows.column(c).to_pylist() for c in ("sha256", "stage", "variant"))))
    known_stages = {s for s, _, _ in ARTIFACT_FILES}
    report = AuditReport()
    report.missing_files = sorted(k for k in recorded if k[1] in known_stages and k not in found)
    report.unrecorded_files = sorted(found - recorded)
    if store.fs.exists(store.root):
        report.temporaries = sorted(store.rel(p) for p in store.fs.find(store.root) if is_temporary(p))
    return report


__all__ = ["reconcile", "audit", "scan", "AuditReport"]
