"""A real multi-node Ray cluster on loopback, started with `ray start` and stopped by process tree.

Nodes use 127.0.0.2 (head) and 127.0.0.3 (worker): Ray replaces 127.0.0.1 with the machine's
primary address, so these keep every byte on loopback. Each node runs `ray start --block` in its
own session with its own temp dir and ports, so it can be killed alone (SIGKILL of its process
tree, the way a machine dies) and everything is stopped by process tree, never with the global
`ray stop`, which would also stop other people's clusters on this machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
REPO = Path(__file__).resolve().parents[2]
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def free_port(ip: str = HEAD_IP) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "1",
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
        # a dead node is noticed within a few seconds rather than ~30 s
        "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
        "RAY_health_check_timeout_ms": "1000",
    })
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


@dataclass
class Node:
    ip: str
    proc: subprocess.Popen
    temp_dir: Path
    log: Path
    resources: dict[str, float]
    node_id: str | None = None
    pids: set[int] = field(default_factory=set)

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        self.pids.update(p.pid for p in procs)
        alive = []
        for pid in self.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                alive.append(psutil.Process(pid))
        return alive

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Kill every process of this node at once (a machine dying); returns how many."""
        procs = self.tree()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        psutil.wait_procs(procs, timeout=10)
        return len(procs)


class LoopbackCluster:
    def __init__(self, tmp: Path, object_store_memory: int = 150 * 1024 * 1024) -> None:
        self.tmp = Path(tmp)
        self.osm = object_store_memory
        self.nodes: list[Node] = []
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.env = node_env()
        # AF_UNIX socket paths are limited to 107 bytes: Ray's temp dirs need a short root.
        self.short = Path(tempfile.mkdtemp(prefix="trl-", dir="/tmp"))

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://{HEAD_IP}:{self.dashboard_port}"

    def _start(self, ip: str, head: bool, resources: dict[str, float], num_cpus: int) -> Node:
        name = "head" if head else f"worker{len(self.nodes)}"
        temp = self.short / name
        temp.mkdir(parents=True, exist_ok=True)
        log = self.tmp / f"{name}.log"
        cmd = [RAY, "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={num_cpus}",
               f"--object-store-memory={self.osm}", f"--temp-dir={temp}", f"--resources={json.dumps(resources)}",
               f"--dashboard-agent-listen-port={free_port(ip)}", f"--dashboard-agent-grpc-port={free_port(ip)}",
               f"--metrics-export-port={free_port(ip)}", f"--runtime-env-agent-port={free_port(ip)}",
               f"--node-manager-port={free_port(ip)}", f"--object-manager-port={free_port(ip)}",
               "--disable-usage-stats"]
        if head:
            cmd += ["--head", f"--port={self.gcs_port}", "--dashboard-host", HEAD_IP,
                    f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                    f"--ray-client-server-port={free_port()}"]
        else:
            cmd += [f"--address={self.address}"]
        proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True, cwd=str(self.tmp))
        node = Node(ip, proc, temp, log, resources)
        self.nodes.append(node)
        return node

    def start_head(self, resources: dict[str, float], num_cpus: int = 1, timeout: float = 120) -> Node:
        node = self._start(HEAD_IP, True, resources, num_cpus)
        self.wait_nodes(1, timeout)
        return node

    def add_worker(self, resources: dict[str, float], num_cpus: int = 1, timeout: float = 120) -> Node:
        node = self._start(WORKER_IP, False, resources, num_cpus)
        self.wait_nodes(len([n for n in self.nodes if n.proc.poll() is None]), timeout)
        return node

    # -- the dashboard's REST API (no ray import in the test process) ------------------------------
    def get(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(self.dashboard + path, timeout=timeout) as r:
            return json.loads(r.read().decode())

    def alive_nodes(self) -> list[dict[str, Any]]:
        data = self.get("/api/v0/nodes?limit=100")
        rows = data["data"]["result"]["result"]
        return [r for r in rows if r.get("state") == "ALIVE"]

    def wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    raise RuntimeError(f"ray start exited ({node.proc.returncode}):\n{node.log.read_text()[-3000:]}")
            try:
                alive = self.alive_nodes()
                last = alive
                if len(alive) >= n:
                    for node in self.nodes:
                        for row in alive:
                            if row.get("node_ip") == node.ip:
                                node.node_id = row["node_id"]
                    return
            except Exception as exc:  # dashboard not up yet
                last = exc
            time.sleep(1.0)
        raise TimeoutError(f"{n} nodes not alive after {timeout} s: {last}")

    def wait_node_dead(self, node: Node, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(r["node_id"] != node.node_id for r in self.alive_nodes()):
                return
            time.sleep(0.5)
        raise TimeoutError("node still alive")

    # -- jobs -------------------------------------------------------------------------------------
    def submit(self, entrypoint: list[str], submission_id: str, timeout: float = 120) -> str:
        """`ray job submit --no-wait` (the CLI users run); returns the submission id."""
        cmd = [RAY, "job", "submit", "--address", self.dashboard, "--submission-id", submission_id, "--no-wait",
               "--", *entrypoint]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))
        if out.returncode != 0:
            raise RuntimeError(f"ray job submit failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        return submission_id

    def job(self, submission_id: str) -> dict[str, Any]:
        return self.get(f"/api/jobs/{submission_id}")

    def job_logs(self, submission_id: str) -> str:
        return self.get(f"/api/jobs/{submission_id}/logs")["logs"]

    def wait_job(self, submission_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        info: dict[str, Any] = {}
        while time.monotonic() < deadline:
            info = self.job(submission_id)
            if info.get("status") in ("SUCCEEDED", "FAILED", "STOPPED"):
                return info
            time.sleep(1.0)
        raise TimeoutError(f"job {submission_id} still {info.get('status')} after {timeout} s")

    # -- teardown ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every node by process tree: SIGTERM, then SIGKILL whatever is left (never `ray stop`)."""
        for node in reversed(self.nodes):
            node.tree()
        for node in reversed(self.nodes):
            node.kill(signal.SIGTERM)
        for node in reversed(self.nodes):
            node.kill(signal.SIGKILL)
            with contextlib.suppress(Exception):
                node.proc.wait(timeout=5)
        shutil.rmtree(self.short, ignore_errors=True)
