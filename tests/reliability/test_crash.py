"""Ten SIGKILLs of the driver at seeded random moments, each followed by a resume: at the end every
asset is current exactly once, the store and catalog agree, and no temporary file is visible.

The driver (`python -m pipeline.job`) connects to a running single-node Ray (`ray start` on
127.0.0.2), as it does on a cluster's head node, so each restart costs a connect rather than a
Ray start. Each kill is drawn (seeded) as either an early moment, a random time in the first seconds
(imports, connecting, listing, planning, actor start-up), or a streaming moment, right after a
random number of new records were published (the driver is then upserting, flushing record logs
and publishing artifacts). Drawing by event rather than by wall time alone keeps the kills spread
over the whole run on a loaded machine, where start-up time varies several-fold.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from catalogs.catalog import Catalog
from catalogs.reconcile import audit
from catalogs.store import TMP_MARK, Store
from curation.sources.sample import SAMPLES
from tests.cluster.loopback import REPO, LoopbackCluster
from tests.reliability.figures import emit

N = len(SAMPLES)
STAGES = ("ingest", "normalize", "voxelize")
KILLS = 10
SEED = 20261125


def records(root: Path) -> int:
    n = 0
    for p in (root / "catalog" / "records").glob("run=*/part-*.parquet"):
        try:
            n += pq.read_metadata(io.BytesIO(p.read_bytes())).num_rows
        except Exception:  # noqa: BLE001 - only published files are visible; be safe anyway
            continue
    return n


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    c = LoopbackCluster(tmp_path_factory.mktemp("crash-cluster"))
    try:
        c.start_head({}, num_cpus=2)
        yield c
    finally:
        c.stop()


def test_ten_sigkills_of_the_driver_then_resume(head, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "crash", "sources": [{"name": "sample"}],
                                    "stages": ["ingest", "normalize", {"name": "voxelize", "params": {"resolution": 64}}],
                                    "execution": {"flush_every": 1, "flush_s": 0.1}}))
    root, catalog = tmp_path / "store", tmp_path / "head" / "catalog.duckdb"
    cmd = [sys.executable, "-m", "pipeline.job", "--spec", str(spec), "--root", str(root), "--catalog", str(catalog),
           "--address", head.address, "--max-restarts", "0", "--no-export"]
    rng = random.Random(SEED)
    log = []
    started = time.monotonic()
    for i in range(KILLS):
        early = rng.random() < 0.3
        delay, more = (rng.uniform(0.5, 8.0), 10**9) if early else (180.0, rng.randint(1, 8))
        before = records(root)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=head.env, stdout=subprocess.DEVNULL,
                                stderr=(tmp_path / f"driver{i}.log").open("wb"), start_new_session=True)
        while proc.poll() is None and time.monotonic() - t0 < delay and records(root) - before < more:
            time.sleep(0.02)
        finished = proc.poll() is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.append({"kill": i, "mode": "early" if early else f"after {more} records", "after_s": round(time.monotonic() - t0, 2), "records_before": before,
                    "records_at_kill": records(root), "exited_first": finished})
        assert not finished or proc.returncode == 0, (tmp_path / f"driver{i}.log").read_text()[-3000:]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=str(REPO), env=head.env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-4000:]
    final_s = time.monotonic() - t0
    figures = {"kills": log, "final_resume_s": round(final_s, 1), "total_s": round(time.monotonic() - started, 1),
               "assets": N, "stages": len(STAGES), "seed": SEED}
    print(json.dumps(figures))
    emit("crash", figures)

    killed_mid_run = [k for k in log if not k["exited_first"]]
    assert len(killed_mid_run) == KILLS
    assert sum(k["records_at_kill"] > k["records_before"] for k in log) >= 5  # kills landed during streaming

    cat = Catalog(catalog, read_only=True)
    got = cat.query("SELECT stage, count(*) AS n, count(DISTINCT sha256) AS d, count(*) FILTER (WHERE status = 'ok') AS ok "
                    "FROM artifacts GROUP BY stage ORDER BY stage").to_pylist()
    assert [(r["stage"], r["n"], r["d"], r["ok"]) for r in got] == [(s, N, N, N) for s in sorted(STAGES)]
    statuses = cat.query("SELECT status, count(*) AS n FROM runs GROUP BY status").to_pylist()
    assert {r["status"] for r in statuses} <= {"interrupted", "finished"}
    assert cat.scalar("SELECT count(*) FROM runs WHERE status = 'running'") == 0
    store = Store(str(root))
    report = audit(store, cat)
    assert report.ok, report
    assert not [p for p in root.rglob("*") if TMP_MARK in p.name]
    for d, n in (("voxels", N), ("meshes", N), ("raw/sample", N)):
        assert len(list((root / d).iterdir())) == n, d
