"""The Ray dashboard stays usable while a build runs against a cluster that has one: the build
(a separate driver, `--address`) neither disables nor breaks it, and the dashboard's API shows the
stage actors and the progress counter while it works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.cluster
def test_dashboard_usable_during_a_build(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}  # our own loopback test cluster
    from tests.foundation.helpers import THIN_SLICE, spec, write_spec

    path = write_spec(tmp_path / "thin.yaml", spec(THIN_SLICE))
    res = subprocess.run([sys.executable, str(Path(__file__).with_name("dashboard_probe.py")), str(path),
                          str(tmp_path / "store")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert lines, res.stdout[-2000:] + res.stderr[-2000:]
    out = json.loads(lines[-1])
    assert out["rc"] == 0, out["tail"]
    assert out["index_status"] == 200 and out["polls_ok"] >= 3
    assert "ProgressCounter" in out["classes"] and any("StageRunner" in c for c in out["classes"])
