"""The CLI: every verb has --help; query is read-only; status and export work on a catalog."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from catalogs.catalog import Catalog, utcnow
from pipeline.cli import main
from pipeline.spec import plan_stages
from tests.foundation.helpers import THIN_SLICE, spec, write_spec

SHA = "%064x" % 7


@pytest.fixture
def catalog_root(tmp_path):
    root = tmp_path / "store"
    cat = Catalog(root / "catalog.duckdb")
    cat.upsert_assets([{"sha256": SHA, "source": "sample", "file_identifier": "x", "captions": '["a thing"]'}])
    fps = {p.name: p.fingerprint for p in plan_stages(spec(THIN_SLICE).build_stages())}
    cat.upsert_artifacts([{"sha256": SHA, "stage": s, "variant": "", "fingerprint": fps[s], "status": "ok", "attempts": 1,
                           "metrics": {"num_voxels": 9} if s == "voxelize" else {}, "updated_at": utcnow()} for s in fps])
    return root


@pytest.mark.parametrize("verb", ["build", "status", "query", "export", "reconcile", "coverage", "plan", "report"])
def test_help(verb):
    result = CliRunner().invoke(main, [verb, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_query_is_read_only(catalog_root):
    ok = CliRunner().invoke(main, ["query", "SELECT count(*) AS n FROM assets", "--root", str(catalog_root), "--format", "json"])
    assert ok.exit_code == 0 and json.loads(ok.output) == [{"n": 1}]
    bad = CliRunner().invoke(main, ["query", "DELETE FROM assets", "--root", str(catalog_root)])
    assert bad.exit_code != 0
    assert Catalog(catalog_root / "catalog.duckdb", read_only=True).scalar("SELECT count(*) FROM assets") == 1


def test_status_and_export(catalog_root, tmp_path):
    spec_path = write_spec(tmp_path / "spec.yaml", spec(THIN_SLICE))
    result = CliRunner().invoke(main, ["status", "--spec", str(spec_path), "--root", str(catalog_root)])
    assert result.exit_code == 0, result.output
    assert "voxelize" in result.output and "current" in result.output
    result = CliRunner().invoke(main, ["export", "--root", str(catalog_root)])
    assert result.exit_code == 0, result.output
    assert (catalog_root / "metadata.csv").read_text().startswith("sha256,file_identifier,aesthetic_score,captions")


def test_remote_root_needs_a_catalog():
    result = CliRunner().invoke(main, ["status", "--root", "s3://bucket/data"])
    assert result.exit_code != 0 and "--catalog" in result.output
