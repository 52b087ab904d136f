"""Fault and bad-input figures: runs the reliability tests and records what they measured.

    python -m bench.reliability_figures            # crash + bad inputs (single node)
    python -m bench.reliability_figures --cluster  # also the two-node worker kill
    python -m bench.reliability_figures --only bad_inputs

Writes bench/results/reliability_faults.json (machine, date, versions, load average, figures).
Timings on a shared 2-core machine depend on its load; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, write_result

TESTS = {
    "crash": "tests/reliability/test_crash.py",
    "bad_inputs": "tests/reliability/test_bad_inputs.py",
    "worker_kill": "tests/cluster/test_two_nodes.py::test_worker_node_killed_mid_run_job_completes",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cluster", action="store_true", help="also run the two-node worker-kill test")
    ap.add_argument("--only", choices=sorted(TESTS), action="append", help="run only these (repeatable)")
    args = ap.parse_args()
    names = args.only or (["crash", "bad_inputs"] + (["worker_kill"] if args.cluster else []))
    out: dict = {"load_average_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, TRELLIS_RELIABILITY_FIGURES=d)
        for name in names:
            t0 = time.monotonic()
            marker = ["-m", "cluster"] if name == "worker_kill" else []
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", *marker, TESTS[name]],
                               cwd=ROOT, env=env, capture_output=True, text=True)
            out[name] = {"passed": r.returncode == 0, "wall_s": round(time.monotonic() - t0, 1)}
            for f in Path(d).glob("*.json"):
                out[name].setdefault("figures", {})[f.stem] = json.loads(f.read_text())
                f.unlink()
    out["load_average_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    write_result("reliability_faults", out)


if __name__ == "__main__":
    main()
