"""The thin slice end to end on a real local Ray cluster with a real DuckDB file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from catalogs.catalog import Catalog
from catalogs.export import export
from catalogs.planner import status
from catalogs.reconcile import audit
from catalogs.store import Store
from curation.sources.sample import SAMPLES, build_sample
from pipeline.executor import build
from pipeline.spec import plan_stages
from tests.foundation.helpers import THIN_SLICE, spec

pytestmark = pytest.mark.usefixtures("ray_session")
N = len(SAMPLES)


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("thin") / "store"
    report = build(spec(THIN_SLICE), str(root), str(root / "catalog.duckdb"), progress=False)
    return root, report


def test_thin_slice_builds_every_asset(built):
    root, report = built
    assert report.planned == {"ingest": N, "normalize": N, "voxelize": N}
    assert report.ok == report.planned and not report.failed
    cat = Catalog(root / "catalog.duckdb", read_only=True)
    assert cat.scalar("SELECT count(DISTINCT node_id) FROM artifacts") >= 1
    assert cat.scalar("SELECT count(*) FROM runs WHERE status = 'finished'") == 1
    assert audit(Store(str(root)), cat).ok
    assert len(list((root / "voxels").iterdir())) == N


def test_second_build_does_no_work(built):
    root, _ = built
    again = build(spec(THIN_SLICE), str(root), str(root / "catalog.duckdb"), progress=False)
    assert not again.did_work and again.planned == {"ingest": 0, "normalize": 0, "voxelize": 0}


def test_metadata_export_has_trellis_columns_and_types(built, tmp_path):
    root, _ = built
    out = Store(str(tmp_path / "export"))
    export(Catalog(root / "catalog.duckdb", read_only=True), Store(str(root)), out)
    df = pd.read_csv(tmp_path / "export" / "metadata.csv")
    assert df.columns[0] == "sha256"
    for col in ("file_identifier", "aesthetic_score", "captions", "local_path", "rendered", "voxelized", "num_voxels",
                "cond_rendered"):
        assert col in df.columns
    assert df["rendered"].dtype == bool and df["voxelized"].dtype == bool and df["cond_rendered"].dtype == bool
    assert df["num_voxels"].dtype == "int64" and (df["num_voxels"] > 0).all()
    assert df["aesthetic_score"].dtype == "float64"
    assert df["voxelized"].all() and not df["rendered"].any()
    assert df["local_path"].str.startswith("raw/sample/").all()
    assert df["sha256"].is_unique and len(df) == N
    import json

    assert all(isinstance(json.loads(c), list) and json.loads(c) for c in df["captions"])
    stats = (tmp_path / "export" / "statistics.txt").read_text()
    assert f"Number of assets voxelized: {N}" in stats
    assert (root / "catalog" / "snapshot" / "artifacts.parquet").exists()


def test_changed_voxelize_param_makes_only_voxelize_stale(built, tmp_path):
    src, _ = built
    root = tmp_path / "store"
    shutil.copytree(src, root)
    changed = spec(["ingest", "normalize", {"name": "voxelize", "params": {"resolution": 32}}])
    cat = Catalog(root / "catalog.duckdb")
    rows = {r["stage"]: r for r in status(cat, plan_stages(changed.build_stages()))}
    assert rows["ingest"]["current"] == rows["normalize"]["current"] == N
    assert rows["voxelize"]["stale"] == N and rows["voxelize"]["current"] == 0
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "meshes").iterdir()}
    voxels_before = {p.name: p.read_bytes() for p in (root / "voxels").iterdir()}
    report = build(changed, str(root), str(root / "catalog.duckdb"), progress=False)
    assert report.planned == {"ingest": 0, "normalize": 0, "voxelize": N}
    assert {p: p.stat().st_mtime_ns for p in (root / "meshes").iterdir()} == mtimes
    assert all(voxels_before[p.name] != p.read_bytes() for p in (root / "voxels").iterdir())
    assert cat.scalar("SELECT max(CAST(json_extract(metrics, '$.resolution') AS INT)) FROM artifacts WHERE stage = 'voxelize'") == 32


def test_bad_inputs_fail_typed_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "meshes"
    folder.mkdir()
    good = ["box", "torus", "vase"]
    for name in good:
        (folder / f"{name}.{SAMPLES[name][0]}").write_bytes(build_sample(name))
    (folder / "corrupt.glb").write_bytes(b"glTF\x02\x00\x00\x00" + os.urandom(200))
    (folder / "empty.obj").write_bytes(b"")
    (folder / "notes.txt").write_text("not a mesh at all\n")
    root = tmp_path / "store"
    s = spec(THIN_SLICE, sources=[{"name": "local", "options": {"path": str(folder)}}])
    report = build(s, str(root), str(root / "catalog.duckdb"), progress=False)
    cat = Catalog(root / "catalog.duckdb", read_only=True)
    failed = {r["file_identifier"]: r for r in cat.query(
        "SELECT a.file_identifier, f.stage, f.error_type, f.error FROM artifacts f JOIN assets a USING (sha256) "
        "WHERE f.status = 'failed'").to_pylist()}
    assert failed["corrupt.glb"]["error_type"] == "corrupt_file" and failed["corrupt.glb"]["stage"] == "normalize"
    assert failed["empty.obj"]["error_type"] == "empty_file" and failed["empty.obj"]["stage"] == "ingest"
    assert failed["notes.txt"]["error_type"] == "unsupported_format"
    assert all(r["error"] for r in failed.values())
    assert report.ok["voxelize"] == len(good)
    # permanent failures are not retried and block nothing else: a second run has nothing to do
    assert not build(s, str(root), str(root / "catalog.duckdb"), progress=False).did_work
