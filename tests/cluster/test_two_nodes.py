"""Two Ray nodes on loopback (`ray start` head 127.0.0.2 + worker 127.0.0.3 with different custom
resources), the sample build submitted with `ray job submit`: placement by resource name, both
nodes do work, the job entry also runs as a script (`ray submit`), and killing the worker node
mid-run still completes the job with nothing lost and nothing done twice."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from catalogs.catalog import Catalog
from catalogs.reconcile import audit
from catalogs.store import Store
from curation.sources.sample import SAMPLES
from tests.cluster.loopback import REPO, LoopbackCluster

pytestmark = pytest.mark.cluster
N = len(SAMPLES)
STAGES = ["ingest", "normalize", "voxelize"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loopback")
    c = LoopbackCluster(tmp)
    try:
        c.start_head({"head": 1})
        c.add_worker({"render": 2})
        assert {n.node_id for n in c.nodes} and None not in {n.node_id for n in c.nodes}
        yield c
    finally:
        c.stop()


def write_spec(path: Path, stages: list, **execution) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "sources": [{"name": "sample"}], "stages": stages,
                                    "execution": {"flush_every": 2, "flush_s": 0.5, **execution}}))
    return path


def entry(spec: Path, root: Path, catalog: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.job", "--spec", str(spec), "--root", str(root), "--catalog", str(catalog),
            "--max-restarts", "3", *extra]


def summary(logs: str) -> dict:
    line = next(ln for ln in reversed(logs.splitlines()) if ln.startswith("TRELLIS_JOB_SUMMARY "))
    return json.loads(line.split(" ", 1)[1])


def records_in_store(root: Path) -> list[dict]:
    out = []
    for p in sorted((root / "catalog" / "records").glob("run=*/part-*.parquet")):
        out += pq.read_table(io.BytesIO(p.read_bytes()), columns=["sha256", "stage", "status", "node_id"]).to_pylist()
    return out


def assert_complete_once(root: Path, catalog: Path) -> None:
    cat = Catalog(catalog, read_only=True)
    rows = cat.query("SELECT stage, count(*) AS n, count(DISTINCT sha256) AS d FROM artifacts WHERE status = 'ok' "
                     "GROUP BY stage ORDER BY stage").to_pylist()
    assert [(r["stage"], r["n"], r["d"]) for r in rows] == sorted((s, N, N) for s in STAGES)
    assert cat.scalar("SELECT count(*) FROM artifacts WHERE status <> 'ok'") == 0
    # no duplicates: each (asset, stage) was recorded ok exactly once over every run
    dup = cat.scalar("SELECT count(*) FROM (SELECT sha256, stage FROM artifact_events WHERE status = 'ok' "
                     "GROUP BY ALL HAVING count(*) > 1)")
    assert dup == 0
    report = audit(Store(str(root)), cat)
    assert report.ok, report
    assert len(list((root / "voxels").iterdir())) == N and len(list((root / "meshes").iterdir())) == N


def test_job_submit_places_stages_by_resource_and_both_nodes_work(cluster, tmp_path):
    head, worker = cluster.nodes
    # ingest only where `head` is, the mesh stages only where `render` is (run-time config, not params)
    spec = write_spec(tmp_path / "placed.yaml", [
        {"name": "ingest", "config": {"resources": {"custom": {"head": 0.1}}}},
        {"name": "normalize", "config": {"resources": {"custom": {"render": 0.5}}}},
        {"name": "voxelize", "params": {"resolution": 64}, "config": {"resources": {"custom": {"render": 0.5}}}},
    ])
    root, catalog = tmp_path / "store", tmp_path / "catalog.duckdb"
    sid = cluster.submit(entry(spec, root, catalog), "placed")
    info = cluster.wait_job(sid, 300)
    logs = cluster.job_logs(sid)
    assert info["status"] == "SUCCEEDED", logs[-4000:]
    s = summary(logs)
    assert s["runs"][0]["ok"] == {st: N for st in STAGES}
    cat = Catalog(catalog, read_only=True)
    nodes = {(r["stage"], r["node_id"]) for r in cat.query("SELECT DISTINCT stage, node_id FROM artifacts").to_pylist()}
    assert nodes == {("ingest", head.node_id), ("normalize", worker.node_id), ("voxelize", worker.node_id)}
    assert set(s["artifacts_per_node"]) == {head.node_id, worker.node_id}
    assert_complete_once(root, catalog)
    # the same node ids are in the store's record log, so the placement survives a reconcile
    assert {r["node_id"] for r in records_in_store(root)} == {head.node_id, worker.node_id}
    # Parquet snapshots of the catalog went to the store
    assert (root / "catalog" / "snapshot" / "artifacts.parquet").exists() and (root / "metadata.csv").exists()


def test_job_entry_runs_as_a_script_like_ray_submit(cluster, tmp_path):
    """`ray submit cluster.yaml pipeline/job.py -- args` runs the file as a script on the head."""
    import subprocess

    spec = write_spec(tmp_path / "tiny.yaml", ["ingest"], )
    spec.write_text(spec.read_text().replace("- name: sample", "- name: sample\n  options: {names: [box, cone]}"))
    root, catalog = tmp_path / "store", tmp_path / "catalog.duckdb"
    cmd = [sys.executable, str(REPO / "pipeline" / "job.py"), "--spec", str(spec), "--root", str(root),
           "--catalog", str(catalog), "--address", cluster.address, "--no-export"]
    for expect in ({"ingest": 2}, {"ingest": 0}):  # the second run resumes: nothing left to do
        out = subprocess.run(cmd, cwd=str(tmp_path), env=cluster.env, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-3000:]
        s = summary(out.stdout)
        assert s["runs"][0]["planned"] == expect


def test_worker_node_killed_mid_run_job_completes(cluster, tmp_path):
    head, worker = cluster.nodes
    spec = write_spec(tmp_path / "thin.yaml", ["ingest", "normalize", {"name": "voxelize", "params": {"resolution": 64}}])
    root, catalog = tmp_path / "store", tmp_path / "catalog.duckdb"
    sid = cluster.submit(entry(spec, root, catalog), "killworker")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        recs = records_in_store(root) if (root / "catalog" / "records").exists() else []
        if any(r["node_id"] == worker.node_id for r in recs):
            break
        assert cluster.job(sid)["status"] in ("PENDING", "RUNNING"), cluster.job_logs(sid)[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("the worker node never produced a record")
    done_at_kill = len(records_in_store(root))
    assert done_at_kill < 3 * N, "the run finished before the kill; nothing was tested"
    killed = worker.kill()
    assert killed >= 3  # ray start, raylet, agents, workers
    cluster.wait_node_dead(worker, 60)
    info = cluster.wait_job(sid, 400)
    logs = cluster.job_logs(sid)
    assert info["status"] == "SUCCEEDED", logs[-5000:]
    assert_complete_once(root, catalog)
    s = summary(logs)
    assert sum(r["ok"].get("voxelize", 0) for r in s["runs"]) == N
    # work after the kill happened on the head
    assert head.node_id in s["artifacts_per_node"]
    figures = {"records_at_kill": done_at_kill, "records_total": 3 * N, "job_restarts": s["restarts"],
               "artifacts_per_node": s["artifacts_per_node"], "job_seconds": s["seconds"]}
    print(json.dumps(figures))
    from tests.reliability.figures import emit

    emit("worker_kill", figures)
