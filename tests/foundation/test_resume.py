"""A build killed with SIGKILL mid-run resumes: finishes, no duplicates, no visible temporaries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from catalogs.catalog import Catalog
from catalogs.reconcile import audit
from catalogs.store import Store
from curation.sources.sample import SAMPLES
from tests.foundation.helpers import THIN_SLICE, spec, write_spec

N = len(SAMPLES)


def run_build(spec_path: Path, root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "build", "--spec", str(spec_path), "--root", str(root),
                             "--no-progress", "--num-cpus", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=Path(__file__).resolve().parents[2])


def test_sigkill_mid_run_then_resume(tmp_path):
    root = tmp_path / "store"
    spec_path = write_spec(tmp_path / "spec.yaml", spec(THIN_SLICE, flush_every=3, flush_s=0.2))
    proc = run_build(spec_path, root)
    records = root / "catalog" / "records"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(records.glob("*/part-*.parquet")):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cat = Catalog(root / "catalog.duckdb")
    interrupted = cat.query("SELECT status FROM runs").column("status").to_pylist()
    assert interrupted == ["running"]  # it really died mid-run
    done_before = cat.scalar("SELECT count(*) FROM artifacts WHERE status = 'ok'")
    assert done_before < 3 * N

    resumed = run_build(spec_path, root)
    out = resumed.communicate(timeout=600)[0].decode()
    assert resumed.returncode == 0, out[-3000:]
    report = audit(Store(str(root)), cat)
    assert report.ok, report
    counts = cat.query("SELECT stage, count(*) AS n, count(DISTINCT sha256) AS d FROM artifacts WHERE status = 'ok' GROUP BY stage").to_pylist()
    assert sorted((r["stage"], r["n"], r["d"]) for r in counts) == [("ingest", N, N), ("normalize", N, N), ("voxelize", N, N)]
    assert len(list((root / "voxels").iterdir())) == N
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]
    assert cat.query("SELECT status FROM runs ORDER BY started_at").column("status").to_pylist() == ["interrupted", "finished"]
