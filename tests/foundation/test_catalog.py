"""Catalog: migrations, upserts, views, read-only access."""

from __future__ import annotations

import duckdb
import pytest

from catalogs.catalog import Catalog, utcnow
from catalogs.schema import MIGRATIONS

SHA = ["%064x" % i for i in range(1, 4)]


def rec(sha, stage, status="ok", fp="f", variant="", **kw):
    return {"sha256": sha, "stage": stage, "variant": variant, "fingerprint": fp, "status": status, "attempts": 1,
            "updated_at": utcnow(), **kw}


def test_migrations_are_recorded_and_idempotent(tmp_path):
    c = Catalog(tmp_path / "c.duckdb")
    assert c.migrate() == MIGRATIONS[-1][0]
    versions = c.query("SELECT version FROM schema_version").column("version").to_pylist()
    assert versions == [v for v, _, _ in MIGRATIONS]
    tables = set(c.query("SELECT table_name FROM information_schema.tables").column("table_name").to_pylist())
    assert {"assets", "artifacts", "artifact_events", "runs", "models", "current_artifacts", "metadata"} <= tables


def test_upsert_replaces_state_and_keeps_history(tmp_path):
    c = Catalog(tmp_path / "c.duckdb")
    c.upsert_assets([{"sha256": SHA[0], "source": "s"}])
    c.upsert_artifacts([rec(SHA[0], "voxelize", status="failed", error_type="corrupt_file")])
    c.upsert_artifacts([rec(SHA[0], "voxelize", metrics={"num_voxels": 7})])
    rows = c.query("SELECT status, metrics FROM artifacts").to_pylist()
    assert rows == [{"status": "ok", "metrics": '{"num_voxels": 7}'}]
    assert c.scalar("SELECT count(*) FROM artifact_events") == 2
    assert c.query("SELECT num_voxels, voxelized FROM metadata").to_pylist() == [{"num_voxels": 7, "voxelized": True}]


def test_metadata_view_gains_model_columns(tmp_path):
    c = Catalog(tmp_path / "c.duckdb")
    c.upsert_assets([{"sha256": s, "source": "s"} for s in SHA])
    c.upsert_artifacts([rec(SHA[0], "features", variant="dinov2_vitl14_reg"), rec(SHA[1], "slat", variant="m_slat")])
    cols = c.query("SELECT * FROM metadata").column_names
    assert "feature_dinov2_vitl14_reg" in cols and "latent_m_slat" in cols
    got = c.query('SELECT sha256, "feature_dinov2_vitl14_reg" AS f FROM metadata ORDER BY sha256').to_pylist()
    assert [r["f"] for r in got] == [True, False, False]


def test_read_only_connection_refuses_writes(tmp_path):
    Catalog(tmp_path / "c.duckdb")
    ro = Catalog(tmp_path / "c.duckdb", read_only=True)
    with pytest.raises(duckdb.Error):
        ro.query("DELETE FROM assets")
    with pytest.raises(FileNotFoundError):
        Catalog(tmp_path / "absent.duckdb", read_only=True)
