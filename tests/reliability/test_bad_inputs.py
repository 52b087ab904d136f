"""The bad-input corpus through a real build: every case ends as its expected typed failure (or a
clean success where the input is valid), the run completes, nothing is written outside the store,
and the build's memory stays bounded (peak RSS of the whole process tree, sampled)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from catalogs.catalog import Catalog
from catalogs.reconcile import ARTIFACT_FILES, audit
from catalogs.store import TMP_MARK, Store
from tests.reliability.corpus import Server, local_cases, remote_cases
from tests.reliability.figures import emit

REPO = Path(__file__).resolve().parents[2]
ORDER = ("ingest", "normalize", "voxelize")
MAX_PROCESS_RSS = 3 << 30
MAX_TREE_RSS = 8 << 30


class RssSampler(threading.Thread):
    """Peak RSS of one process and of its whole tree (driver, Ray, workers, isolated children)."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_one = self.peak_tree = 0
        self.peak_name = ""
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if rss > self.peak_one:
                    self.peak_one, self.peak_name = rss, " ".join(p.cmdline()[:3])[:120]
            self.peak_tree = max(self.peak_tree, total)
            time.sleep(self.every_s)


def snapshot_tree(root: Path) -> set[str]:
    """Files under `root` (empty directories are ignored: importing bpy creates ~/.cache/thumbnails/)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()} if root.exists() else set()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_bad_input_corpus(tmp_path, server):
    inputs = tmp_path / "inputs"
    local = local_cases(inputs)
    remote, rows = remote_cases(server)
    listing = tmp_path / "github.csv"
    import pandas as pd

    pd.DataFrame(rows).to_csv(listing, index=False)
    home, tmpdir, cache = tmp_path / "home", tmp_path / "tmpdir", tmp_path / "cache"
    for d in (home, tmpdir, cache):
        d.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="trb-", dir="/tmp"))  # AF_UNIX paths must stay short
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "bad_inputs",
        "sources": [
            {"name": "local", "options": {"path": str(inputs)}},
            {"name": "objaverse_github", "options": {
                "listing": str(listing), "archive_url": server.base + "/{org}/{repo}/zip/{commit}",
                "cache_dir": str(cache), "read_timeout": 1.0, "connect_timeout": 1.0, "max_attempts": 2,
                "backoff_base": 0.01, "backoff_cap": 0.05, "max_retry_after": 1}},
        ],
        "stages": [{"name": "ingest", "config": {"max_attempts": 2}}, "normalize",
                   {"name": "voxelize", "params": {"resolution": 64}}],
        "execution": {"flush_every": 20, "flush_s": 1.0},
    }))
    root, catalog = tmp_path / "store", tmp_path / "head" / "catalog.duckdb"
    before_inputs = {p: p.stat().st_mtime_ns for p in inputs.rglob("*")}
    env = dict(os.environ, HOME=str(home), TMPDIR=str(tmpdir), RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", TRELLIS_DATA_CACHE=str(cache))
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipeline.job", "--spec", str(spec), "--root", str(root), "--catalog", str(catalog),
           "--address", "local", "--num-cpus", "2", "--max-restarts", "0", "--no-export",
           "--summary", str(tmp_path / "summary.json")]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        out = proc.communicate(timeout=600)[0].decode(errors="replace")
    finally:
        sampler.done.set()
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    seconds = time.monotonic() - t0
    (tmp_path / "build.log").write_text(out)
    assert proc.returncode == 0, out[-5000:]

    cat = Catalog(catalog, read_only=True)
    assets = cat.query("SELECT sha256, source, file_identifier FROM assets").to_pylist()
    arts = cat.query("SELECT sha256, stage, status, error_type FROM artifacts").to_pylist()
    per_asset: dict[str, dict[str, dict]] = {}
    for a in arts:
        per_asset.setdefault(a["sha256"], {})[a["stage"]] = a

    def outcome(sha: str) -> tuple[str, str]:
        recs = per_asset.get(sha, {})
        for st in ORDER:
            r = recs.get(st)
            if r is None:
                return ("missing", st)
            if r["status"] != "ok":
                return (r["error_type"], st)
        return ("ok", "")

    by_fid = {a["file_identifier"]: a["sha256"] for a in assets}
    results = {}
    for case, name in local:
        fid = name if isinstance(name, str) else os.fsdecode(name).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        match = [s for f, s in by_fid.items() if f == fid]
        assert match, f"{case.name}: no asset for {fid!r}"
        results[case.name] = (case, *outcome(match[0]))
    for case, row in zip(remote, rows):
        results[case.name] = (case, *outcome(by_fid[row["file_identifier"]]))

    table = {n: {"expect": c.expect, "got": got, "stage": st} for n, (c, got, st) in results.items()}
    (tmp_path / "results.json").write_text(json.dumps(table, indent=1))
    wrong = {n: v for n, v in table.items() if v["got"] != v["expect"] or (v["got"] != "ok" and (results[n][0].stage or v["stage"]) != v["stage"])}
    figures = {"cases": len(table), "ok": sum(v["got"] == "ok" for v in table.values()),
                      "typed_failures": sum(v["got"] != "ok" for v in table.values()), "seconds": round(seconds, 1),
                      "peak_process_rss_mb": sampler.peak_one >> 20, "peak_process": sampler.peak_name,
                      "peak_tree_rss_mb": sampler.peak_tree >> 20, "outcomes": table}
    print(json.dumps(figures, indent=1))
    emit("bad_inputs", figures)
    assert not wrong, json.dumps(wrong, indent=1)
    assert len(table) >= 40

    # every failure is typed: a known category, never an unclassified internal error
    internal = [a for a in arts if a["status"] != "ok" and (a["error_type"] or "internal").startswith("internal")]
    assert not internal, internal
    # nothing written outside the store: no escapes, HOME and TMPDIR left empty, inputs untouched
    assert not list(tmp_path.rglob("evil*")) and not Path("/tmp/evil_abs.glb").exists()
    assert snapshot_tree(home) == set(), snapshot_tree(home)
    assert snapshot_tree(tmpdir) == set(), snapshot_tree(tmpdir)
    assert {p: p.stat().st_mtime_ns for p in inputs.rglob("*")} == before_inputs
    # the store holds only layout files, no temporaries; catalog and store agree
    store = Store(str(root))
    report = audit(store, cat)
    assert report.ok, report
    allowed = [p for _, p, _ in ARTIFACT_FILES]
    for rel in store.walk_files():
        assert rel.startswith("catalog/records/") or any(p.match(rel) for p in allowed) or \
            rel.split("/")[0] == "renders", rel
    assert not [p for p in root.rglob("*") if TMP_MARK in p.name]
    # memory stays bounded, including the 5M-triangle mesh
    assert sampler.peak_one < MAX_PROCESS_RSS, (sampler.peak_one >> 20, sampler.peak_name)
    assert sampler.peak_tree < MAX_TREE_RSS, sampler.peak_tree >> 20
