"""The DuckDB catalog: one file, a single writer (the driver), batched upserts, views and exports.

The driver opens short-lived connections, so `trellis-data query` (read-only) can look in while a
build runs. Workers never open the catalog: they return records that the driver upserts.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from catalogs.schema import MIGRATIONS

# Pipeline stage name -> the TRELLIS metadata.csv column family it feeds (DATA_FORMATS §1.2).
FEATURE_STAGE, SS_LATENT_STAGE, SLAT_STAGE = "features", "ss_latent", "slat"
MODEL_COLUMN_PREFIX = {FEATURE_STAGE: "feature_", SLAT_STAGE: "latent_", SS_LATENT_STAGE: "ss_latent_"}

ARTIFACT_FIELDS = (
    "sha256", "stage", "variant", "fingerprint", "status", "uri", "bytes", "metrics", "error_type",
    "error", "log", "attempts", "retryable", "run_id", "node_id", "seconds", "updated_at",
)
ASSET_FIELDS = (
    "sha256", "source", "file_identifier", "locator", "format", "size_bytes", "license", "captions",
    "aesthetic_score", "extra",
)
ARTIFACT_SCHEMA = pa.schema([
    ("sha256", pa.string()), ("stage", pa.string()), ("variant", pa.string()), ("fingerprint", pa.string()),
    ("status", pa.string()), ("uri", pa.string()), ("bytes", pa.int64()), ("metrics", pa.string()),
    ("error_type", pa.string()), ("error", pa.string()), ("log", pa.string()), ("attempts", pa.int32()),
    ("retryable", pa.bool_()), ("run_id", pa.string()), ("node_id", pa.string()), ("seconds", pa.float64()),
    ("updated_at", pa.timestamp("us")),
])
ASSET_SCHEMA = pa.schema([
    ("sha256", pa.string()), ("source", pa.string()), ("file_identifier", pa.string()), ("locator", pa.string()),
    ("format", pa.string()), ("size_bytes", pa.int64()), ("license", pa.string()), ("captions", pa.string()),
    ("aesthetic_score", pa.float64()), ("extra", pa.string()),
])


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class CatalogBusy(RuntimeError):
    """The catalog file is locked by another process for longer than we were willing to wait."""


class Catalog:
    """A DuckDB catalog file. Writers call `migrate()` once; readers pass `read_only=True`."""

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = str(path)
        self.read_only = read_only
        self._held: duckdb.DuckDBPyConnection | None = None
        if not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.migrate()
        elif not Path(self.path).exists():
            raise FileNotFoundError(f"no catalog at {self.path}")

    # -- connections ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self, wait_s: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection (or the held one, see `writing`); retries while another process
        holds the file lock."""
        if self._held is not None:
            cur = self._held.cursor()  # same open database: no index reload, no checkpoint on close
            try:
                yield cur
            finally:
                cur.close()
            return
        deadline = time.monotonic() + wait_s
        while True:
            try:
                con = duckdb.connect(self.path, read_only=self.read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise CatalogBusy(str(exc)) from exc
                time.sleep(0.05 + random.random() * 0.2)
        try:
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[Catalog]:
        """Hold one writer connection for a whole build.

        Opening a connection loads the primary-key index and closing it checkpoints (rewrites) it,
        which at millions of rows costs seconds per batch; a build therefore keeps one connection,
        lets the write-ahead log absorb its batches and checkpoints once at the end. Readers wait
        (`CatalogBusy` after the timeout) while a build holds the file.
        """
        if self._held is not None:
            yield self
            return
        with self.connect() as con:
            con.execute("SET checkpoint_threshold = '4GB'").fetchall()
            self._held = con
            try:
                yield self
            finally:
                self._held = None

    def migrate(self) -> int:
        with self.connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, description VARCHAR, applied_at TIMESTAMP)")
            have = {r[0] for r in con.execute("SELECT version FROM schema_version").fetchall()}
            for version, description, ddl in MIGRATIONS:
                if version in have:
                    continue
                con.execute("BEGIN")
                con.execute(ddl)
                con.execute("INSERT INTO schema_version VALUES (?, ?, ?)", [version, description, utcnow()])
                con.execute("COMMIT")
            self._refresh_views(con)
            return max(v for v, _, _ in MIGRATIONS)

    # -- writes (driver only) --------------------------------------------------------------------
    def upsert_assets(self, rows: Sequence[Mapping[str, Any]] | pa.Table) -> int:
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist([{k: r.get(k) for k in ASSET_FIELDS} for r in rows], schema=ASSET_SCHEMA)
        if not table.num_rows:
            return 0
        cols = ", ".join(ASSET_FIELDS)
        upd = ", ".join(f"{c} = excluded.{c}" for c in ASSET_FIELDS if c != "sha256")
        with self.connect() as con:
            con.register("incoming", table)
            con.execute(f"INSERT INTO assets ({cols}) SELECT {cols} FROM incoming ON CONFLICT (sha256) DO UPDATE SET {upd}")
        return table.num_rows

    def upsert_artifacts(self, records: Sequence[Mapping[str, Any]] | pa.Table) -> int:
        """Insert-or-replace artifact rows keyed by (sha256, stage, variant); every record is also
        appended to `artifact_events`, the history behind "what changed" reports."""
        table = records if isinstance(records, pa.Table) else artifact_table(records)
        if not table.num_rows:
            return 0
        cols = ", ".join(ARTIFACT_FIELDS)
        with self.connect() as con:
            con.register("incoming", table)
            con.execute("BEGIN")
            # Delete-then-insert instead of INSERT OR REPLACE: DuckDB runs the latter as a MERGE whose
            # in-place UPDATE of indexed rows costs 3-4x more (bench/catalog_scale.py).
            con.execute("DELETE FROM artifacts a USING incoming i "
                        "WHERE a.sha256 = i.sha256 AND a.stage = i.stage AND a.variant = i.variant")
            con.execute(f"INSERT INTO artifacts ({cols}) SELECT {cols} FROM incoming")
            con.execute(f"INSERT INTO artifact_events ({cols}) SELECT {cols} FROM incoming")
            con.execute("COMMIT")
            new_variants = con.execute(
                "SELECT count(*) FROM (SELECT DISTINCT stage, variant FROM incoming) i "
                "WHERE i.stage IN ('features','ss_latent','slat') AND i.variant NOT IN "
                "(SELECT variant FROM _metadata_variants v WHERE v.stage = i.stage)"
            ).fetchone()[0]
            if new_variants:
                self._refresh_views(con)
        return table.num_rows

    def register_model(self, stage: str, variant: str, weights_sha256: str, config: Mapping[str, Any],
                       source: str, pretrained: bool, note: str | None = None) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT INTO models (stage, variant, weights_sha256, config, source, pretrained, note) VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT DO UPDATE SET config = excluded.config, source = excluded.source, "
                "pretrained = excluded.pretrained, note = excluded.note",
                [stage, variant, weights_sha256, json.dumps(config, sort_keys=True), source, pretrained, note],
            )

    def mark_interrupted_runs(self) -> int:
        """Runs still 'running' when a new build starts died with their driver (single writer)."""
        with self.connect() as con:
            return len(con.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running' RETURNING run_id").fetchall())

    def start_run(self, run_id: str, spec: Mapping[str, Any], plan: Mapping[str, Any], host: str, versions: Mapping[str, str]) -> None:
        with self.connect() as con:
            con.execute(
                "INSERT INTO runs (run_id, started_at, status, spec, plan, host, versions) VALUES (?,?,?,?,?,?,?)",
                [run_id, utcnow(), "running", json.dumps(spec), json.dumps(plan), host, json.dumps(versions)],
            )

    def finish_run(self, run_id: str, status: str, counts: Mapping[str, Any]) -> None:
        with self.connect() as con:
            con.execute("UPDATE runs SET finished_at = ?, status = ?, counts = ? WHERE run_id = ?",
                        [utcnow(), status, json.dumps(counts), run_id])

    # -- reads -------------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        with self.connect() as con:
            return con.sql(sql, params=list(params) if params else None).to_arrow_table()

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        with self.connect() as con:
            row = con.execute(sql, params or []).fetchone()
            return row[0] if row else None

    def last_spec(self) -> dict[str, Any] | None:
        spec = self.scalar("SELECT spec FROM runs ORDER BY started_at DESC LIMIT 1")
        return json.loads(spec) if spec else None

    # -- views -------------------------------------------------------------------------------------
    def _refresh_views(self, con: duckdb.DuckDBPyConnection) -> None:
        """(Re)create the views; `metadata` gets one column per model variant seen so far."""
        con.execute("CREATE OR REPLACE VIEW current_artifacts AS SELECT * FROM artifacts WHERE status = 'ok'")
        variants = con.execute(
            "SELECT DISTINCT stage, variant FROM artifacts WHERE stage IN ('features','slat','ss_latent') ORDER BY stage, variant"
        ).fetchall()
        con.execute(
            "CREATE OR REPLACE VIEW _metadata_variants AS SELECT * FROM (VALUES "
            + (", ".join(f"('{s}', '{v}')" for s, v in variants) or "(NULL, NULL)")
            + ") t(stage, variant)"
        )

        def ok(stage: str, variant: str | None = None) -> str:
            cond = f"stage = '{stage}'" + (f" AND variant = '{variant}'" if variant is not None else "")
            return f"coalesce(bool_or(status = 'ok' AND {cond}), false)"

        model_cols = [(f"{MODEL_COLUMN_PREFIX[s]}{v}", ok(s, v))
                      for s in (FEATURE_STAGE, SLAT_STAGE, SS_LATENT_STAGE) for st, v in variants if st == s]
        inner = "".join(f', {expr} AS "{col}"' for col, expr in model_cols)
        outer = "".join(f', coalesce(p."{col}", false) AS "{col}"' for col, _ in model_cols)
        con.execute(f"""
            CREATE OR REPLACE VIEW metadata AS
            WITH per_asset AS (
                SELECT sha256,
                       max(CASE WHEN stage = 'ingest' AND status = 'ok' THEN json_extract_string(metrics, '$.local_path') END) AS local_path,
                       {ok('render')} AS rendered,
                       {ok('voxelize')} AS voxelized,
                       coalesce(max(CASE WHEN stage = 'voxelize' AND status = 'ok'
                                         THEN CAST(json_extract(metrics, '$.num_voxels') AS BIGINT) END), 0) AS num_voxels,
                       {ok('render_cond')} AS cond_rendered
                       {inner}
                FROM artifacts GROUP BY sha256
            )
            SELECT a.sha256, a.file_identifier, a.aesthetic_score, a.captions, a.source, a.license,
                   coalesce(p.rendered, false) AS rendered, coalesce(p.voxelized, false) AS voxelized,
                   coalesce(p.num_voxels, 0) AS num_voxels, coalesce(p.cond_rendered, false) AS cond_rendered,
                   p.local_path
                   {outer}
            FROM assets a LEFT JOIN per_asset p USING (sha256)
        """)


def artifact_table(records: Iterable[Mapping[str, Any]]) -> pa.Table:
    rows = []
    for r in records:
        row = {k: r.get(k) for k in ARTIFACT_FIELDS}
        if row["metrics"] is not None and not isinstance(row["metrics"], str):
            row["metrics"] = json.dumps(row["metrics"], sort_keys=True, default=str)
        if isinstance(row["updated_at"], str):  # records cross process boundaries as JSON
            row["updated_at"] = datetime.fromisoformat(row["updated_at"])
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=ARTIFACT_SCHEMA)
