"""Run by test_dashboard.py in its own process: start a local Ray cluster *with* its dashboard, run
`trellis-data build --address <that cluster>` as a separate driver, and poll the dashboard's HTTP
API while the build runs. Prints one JSON line. Only this process's cluster is started and shut down."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main(spec: str, root: str) -> None:
    import ray

    port = free_port()
    ctx = ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                   _node_ip_address="127.0.0.2", logging_level=logging.WARNING)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "build", "--spec", spec, "--root", root,
                                 "--address", ctx.address_info["gcs_address"], "--no-progress"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        classes: set[str] = set()
        ok = errors = 0
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v0/actors?limit=1000", timeout=10) as r:
                    for a in json.load(r)["data"]["result"]["result"]:
                        classes.add(a.get("class_name") or "")
                ok += 1
            except Exception:  # noqa: BLE001 - counted, reported
                errors += 1
            time.sleep(1)
        out = proc.stdout.read() if proc.stdout else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            index_status = r.status
        print(json.dumps({"rc": proc.returncode, "polls_ok": ok, "poll_errors": errors, "classes": sorted(classes),
                          "index_status": index_status, "tail": out[-500:]}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
