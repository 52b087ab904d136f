"""Live progress: per-stage bars with rate/ETA, failures, and assets skipped behind a failed
upstream (counted, so a downstream bar still reaches its total instead of stalling short of it)."""

from __future__ import annotations

import io
import json

import pyarrow as pa

from pipeline.progress import ProgressCounter, StageProgress
from pipeline.runner import StageRunner


class _LocalCounter:
    """A ProgressCounter called like a Ray actor handle (`.add.remote(...)`), in-process."""

    def __init__(self) -> None:
        self.inner = ProgressCounter()

        class _M:
            def __init__(m, fn):
                m.remote = fn

        self.add = _M(self.inner.add)


def test_bars_count_failures_and_skips(monkeypatch):
    import sys

    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    p = StageProgress([("ingest", 5), ("voxelize", 5)], counter=None, enabled=True)
    p.set_counts({"ingest": [5, 2, 0], "voxelize": [3, 0, 2]})
    assert p.bars["ingest"].n == 5 and p.bars["voxelize"].n == 5
    p.set_counts({"ingest": [5, 2]})  # an old two-field snapshot still works
    p.close()
    out = buf.getvalue()
    assert "failed=2" in out and "skipped=2" in out and "5/5" in out
    assert "asset/s" in out or "s/asset" in out  # the rate; tqdm shows the ETA in the same bracket


def test_runner_reports_blocked_assets_as_skipped(tmp_path):
    counter = _LocalCounter()
    r = StageRunner({"name": "noop", "use": "noop", "params": {}, "config": {}, "upstream": None}, bit=2,
                    upstream_bits=1, fingerprint="fp", store_url=str(tmp_path), storage_options={}, run_id="t",
                    progress=counter)
    sha = ["a" * 64, "b" * 64, "c" * 64]
    batch = pa.table({"sha256": sha, "todo": [3, 3, 3], "asset": [json.dumps({"sha256": s}) for s in sha],
                      "inputs": ["{}"] * 3, "attempts": ["{}"] * 3, "records": ["[]"] * 3, "failed": [1, 0, 0]})
    r(batch)
    assert counter.inner.snapshot() == {"noop": [2, 0, 1]}
