"""What every benchmark records next to its figures: machine, date, versions, git commit.

    from bench.common import metadata, write_result
    write_result("catalog_scale", {"figures": ...})   # -> bench/results/catalog_scale.json
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PACKAGES = ("ray", "duckdb", "pyarrow", "numpy", "psutil", "torch", "open3d", "trimesh", "fsspec")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    if commit is None and os.environ.get("BENCH_GIT_COMMIT"):
        # The GPU machine gets a copy of the working tree without .git: the caller passes the commit
        # of the clean tree it sent (BENCH_GIT_COMMIT=$(git rev-parse HEAD), BENCH_GIT_DIRTY=0).
        return {"commit": os.environ["BENCH_GIT_COMMIT"], "dirty": os.environ.get("BENCH_GIT_DIRTY", "1") != "0",
                "from": "environment"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (*PACKAGES, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, Any]:
    mem = memory_bytes()
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "load_average_at_write": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def metadata(extra_packages: Iterable[str] = ()) -> dict[str, Any]:
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": package_versions(extra_packages),
        "git": git_commit(),
    }


def write_result(name: str, figures: Mapping[str, Any], path: str | Path | None = None) -> Path:
    """Write `{"benchmark": name, **metadata(), **figures}` as JSON; returns the path."""
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, **metadata(), **figures}
    out.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    return out
