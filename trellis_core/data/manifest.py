"""A frozen selection of training assets: catalog SQL -> manifest (Parquet or JSON) with a content id.

The SQL is run once against the catalog; its sha256 list is joined with the ``metadata`` view and
the ``current_artifacts`` view (status ok) of the stages the run needs, and the result is written
as a table of root-relative file names in the TRELLIS layout (DATA_FORMATS §0). A training run
that keeps the manifest (or its id) reads exactly the same assets again, whatever happens to the
catalog later.

Columns: ``sha256, root, source, num_voxels, aesthetic_score, captions`` plus, per requested stage,
``ss_latent`` / ``slat`` / ``features`` (a file) and ``cond`` (the ``renders_cond/<sha>`` folder).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import pyarrow as pa

__all__ = ["Manifest", "build_manifest", "manifest_id"]

_STAGE_COLUMN = {"ss_latent": "ss_latent", "slat": "slat", "features": "features", "render_cond": "cond"}
_BASE_COLUMNS = ("sha256", "root", "source", "num_voxels", "aesthetic_score", "captions")


def _layout_path(stage: str, variant: Optional[str], sha: str) -> str:
    from catalogs import layout

    if stage == "ss_latent":
        return layout.ss_latents(variant, sha)
    if stage == "slat":
        return layout.latents(variant, sha)
    if stage == "features":
        return layout.features(variant, sha)
    if stage == "render_cond":
        return layout.renders_cond(sha)
    raise ValueError(f"unknown stage {stage!r}; known: {sorted(_STAGE_COLUMN)}")


def manifest_id(table: pa.Table, params: Mapping[str, Any]) -> str:
    """sha256 over the canonical rows (sorted by root, sha256) and the selection parameters."""
    h = hashlib.sha256(json.dumps(dict(params), sort_keys=True, default=str).encode())
    rows = sorted(table.to_pylist(), key=lambda r: (r.get("root") or "", r["sha256"]))
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class Manifest:
    table: pa.Table
    params: Dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ identity
    @property
    def id(self) -> str:
        return manifest_id(self.table, self.params)

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist() if name in self.table.column_names else [None] * len(self)

    @property
    def loads(self) -> List[int]:
        """Per-row work estimate for the balanced sampler (``num_voxels``; 1 when unknown)."""
        return [int(v) if v else 1 for v in self.column("num_voxels")]

    @property
    def groups(self) -> List[str]:
        return [g or "" for g in self.column("source")]

    def records(self) -> List[Dict[str, Any]]:
        return self.table.to_pylist()

    # ------------------------------------------------------------------ composition
    @classmethod
    def concat(cls, manifests: Sequence["Manifest"]) -> "Manifest":
        """Several selections (e.g. several roots) as one; sha256 must stay unique (DATA_FORMATS G20)."""
        tables = [m.table for m in manifests]
        cols = sorted(set().union(*[t.column_names for t in tables]), key=lambda c: (c not in _BASE_COLUMNS, c))
        rows = [{c: r.get(c) for c in cols} for t in tables for r in t.to_pylist()]
        shas = [r["sha256"] for r in rows]
        if len(set(shas)) != len(shas):
            raise ValueError("duplicate sha256 across manifests (DATA_FORMATS G20)")
        return cls(pa.Table.from_pylist(rows), {"concat": [m.id for m in manifests]})

    def with_columns(self, **cols: Sequence[Any]) -> "Manifest":
        t = self.table
        for k, v in cols.items():
            if k in t.column_names:
                t = t.drop_columns([k])
            t = t.append_column(k, pa.array(list(v)))
        return Manifest(t, dict(self.params))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str, store=None) -> str:
        """Write ``path`` (``.parquet`` or ``.json``) locally, or into ``store`` when given."""
        data = self.to_bytes(path)
        if store is not None:
            store.write_bytes(path, data)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return self.id

    def to_bytes(self, name: str) -> bytes:
        meta = {"params": self.params, "id": self.id}
        if name.endswith(".json"):
            return json.dumps({**meta, "rows": self.table.to_pylist()}, indent=1, default=str).encode()
        import io
        import pyarrow.parquet as pq

        t = self.table.replace_schema_metadata({b"trellis_manifest": json.dumps(meta, default=str).encode()})
        buf = io.BytesIO()
        pq.write_table(t, buf)
        return buf.getvalue()

    @classmethod
    def load(cls, path: str, store=None) -> "Manifest":
        data = store.read_bytes(path) if store is not None else open(path, "rb").read()
        if path.endswith(".json"):
            d = json.loads(data)
            m = cls(pa.Table.from_pylist(d["rows"]), d.get("params", {}))
            expected = d.get("id")
        else:
            import io
            import pyarrow.parquet as pq

            t = pq.read_table(io.BytesIO(data))
            meta = json.loads((t.schema.metadata or {}).get(b"trellis_manifest", b"{}"))
            m = cls(t.replace_schema_metadata(None), meta.get("params", {}))
            expected = meta.get("id")
        if expected and expected != m.id:
            raise ValueError(f"manifest {path} is corrupt: id {m.id} != recorded {expected}")
        return m


def build_manifest(catalog, sql: str, root: str, stages: Mapping[str, Optional[str]],
                   params: Optional[Mapping[str, Any]] = None, min_aesthetic_score: Optional[float] = None,
                   max_num_voxels: Optional[int] = None) -> Manifest:
    """Freeze a catalog selection.

    ``sql`` yields a ``sha256`` column (any other columns are ignored). ``stages`` maps a stage
    (``ss_latent``, ``slat``, ``features``, ``render_cond``) to its variant (the model name; None for
    ``render_cond``). Only assets with a current (status ok) artifact for every requested stage are
    kept; the order is the catalog's sha256 order, so the manifest does not depend on the SQL's.
    """
    for s in stages:
        if s not in _STAGE_COLUMN:
            raise ValueError(f"unknown stage {s!r}; known: {sorted(_STAGE_COLUMN)}")
    joins, conds, args = [], [], []
    for i, (stage, variant) in enumerate(stages.items()):
        a = f"a{i}"
        vcond = f" AND {a}.variant = ?" if variant is not None else ""
        joins.append(f"JOIN current_artifacts {a} ON {a}.sha256 = m.sha256 AND {a}.stage = ?{vcond}")
        args.append(stage)
        if variant is not None:
            args.append(variant)
    if min_aesthetic_score is not None:
        conds.append("m.aesthetic_score >= ?")
        args.append(min_aesthetic_score)
    if max_num_voxels is not None:
        conds.append("m.num_voxels <= ?")
        args.append(max_num_voxels)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    q = (f"SELECT DISTINCT m.sha256, m.source, m.num_voxels, m.aesthetic_score, m.captions "
         f"FROM metadata m JOIN (SELECT DISTINCT sha256 FROM ({sql})) sel ON sel.sha256 = m.sha256 "
         f"{' '.join(joins)} {where} ORDER BY m.sha256")
    rows = catalog.query(q, args).to_pylist()
    out = []
    for r in rows:
        rec = {"sha256": r["sha256"], "root": root, "source": r["source"], "num_voxels": int(r["num_voxels"] or 0),
               "aesthetic_score": r["aesthetic_score"], "captions": r["captions"]}
        for stage, variant in stages.items():
            rec[_STAGE_COLUMN[stage]] = _layout_path(stage, variant, r["sha256"])
        out.append(rec)
    schema = pa.schema([("sha256", pa.string()), ("root", pa.string()), ("source", pa.string()),
                        ("num_voxels", pa.int64()), ("aesthetic_score", pa.float64()), ("captions", pa.string())]
                       + [(_STAGE_COLUMN[s], pa.string()) for s in stages])
    p = {"sql": sql, "root": root, "stages": dict(stages), "min_aesthetic_score": min_aesthetic_score,
         "max_num_voxels": max_num_voxels, **(params or {})}
    return Manifest(pa.Table.from_pylist(out, schema=schema), p)
