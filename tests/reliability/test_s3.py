"""The store on a real S3-compatible server on loopback (moto's server mode, through s3fs): a
partial build writes there, a second build resumes from it, Parquet snapshots go to the store, and
`reconcile` from the store alone reproduces the catalog's artifact rows. The credentials never
reach the catalog, the store or the logs."""

from __future__ import annotations

import logging

import boto3
import pytest

from catalogs.catalog import Catalog
from catalogs.export import snapshot
from catalogs.reconcile import audit, reconcile
from catalogs.store import Store
from curation.sources.sample import SAMPLES
from pipeline.executor import build
from pipeline.spec import PipelineSpec

N = len(SAMPLES)
ACCESS_KEY = "AKIATRELLISLOOPBACK1"
SECRET = "tr3llis-s3cret-KEY-never-logged-0123456789"
COLUMNS = "sha256, stage, variant, fingerprint, status, uri, bytes, metrics, error_type, attempts, run_id, node_id"


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET,
                 region_name="us-east-1").create_bucket(Bucket="trellis")
    yield endpoint
    server.stop()


def spec(selection: str | None = None) -> PipelineSpec:
    return PipelineSpec.from_dict({
        "name": "s3", "sources": [{"name": "sample"}], "selection": selection,
        "stages": ["ingest", "normalize", {"name": "voxelize", "params": {"resolution": 64}}],
        "execution": {"flush_every": 4, "flush_s": 0.5}})


def rows(cat: Catalog):
    return sorted(cat.query(f"SELECT {COLUMNS} FROM artifacts ORDER BY sha256, stage").to_pylist(),
                  key=lambda r: (r["sha256"], r["stage"]))


def test_build_on_s3_resume_and_reconcile(s3, ray_session, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    url = "s3://trellis/sets/sample"
    opts = {"endpoint_url": s3, "key": ACCESS_KEY, "secret": SECRET, "client_kwargs": {"region_name": "us-east-1"}}
    cat_path = tmp_path / "head" / "catalog.duckdb"

    first = build(spec("SELECT sha256 FROM assets ORDER BY sha256 LIMIT 8"), url, str(cat_path),
                  storage_options=opts, progress=False)
    assert first.ok == {"ingest": 8, "normalize": 8, "voxelize": 8}
    second = build(spec(), url, str(cat_path), storage_options=opts, progress=False)
    assert second.planned == {"ingest": N - 8, "normalize": N - 8, "voxelize": N - 8}  # resumed, not redone
    assert second.ok == {"ingest": N - 8, "normalize": N - 8, "voxelize": N - 8}
    assert build(spec(), url, str(cat_path), storage_options=opts, progress=False).planned == {
        "ingest": 0, "normalize": 0, "voxelize": 0}

    store = Store(url, **opts)
    store.fs.invalidate_cache()
    cat = Catalog(cat_path)
    assert all(u.startswith("s3://trellis/sets/sample/") for u in
               cat.query("SELECT uri FROM artifacts").column("uri").to_pylist())
    assert sum(1 for r in store.walk_files("voxels")) == N
    report = audit(store, cat)
    assert report.ok, report
    snapshot(cat, store)
    assert store.exists("catalog/snapshot/artifacts.parquet")

    # the catalog, rebuilt from the store alone (a fresh process's view: new Store, new catalog)
    rebuilt = Catalog(tmp_path / "rebuilt.duckdb")
    summary = reconcile(Store(url, **opts), rebuilt)
    assert summary["dropped"] == 0 and summary["adopted"] == 0
    assert rows(rebuilt) == rows(cat) and len(rows(cat)) == 3 * N
    assert rebuilt.scalar("SELECT count(*) FROM assets") == N

    # also from the record logs alone (no snapshot yet): the same rows
    store.delete("catalog/snapshot")
    again = Catalog(tmp_path / "from_logs.duckdb")
    reconcile(Store(url, **opts), again)
    assert rows(again) == rows(cat)

    # credentials: nowhere in the catalog file, the snapshots/record logs in the store, or the logs
    for path in (cat_path, tmp_path / "rebuilt.duckdb"):
        blob = path.read_bytes()
        assert SECRET.encode() not in blob and ACCESS_KEY.encode() not in blob
    for rel in store.walk_files("catalog"):
        blob = store.read_bytes(rel)
        assert SECRET.encode() not in blob and ACCESS_KEY.encode() not in blob, rel
    assert SECRET not in caplog.text and ACCESS_KEY not in caplog.text
    assert SECRET not in cat.query("SELECT spec::VARCHAR AS s FROM runs").to_pylist().__repr__()
