"""The stage runner: failures become typed records, timeouts and crashes never escape it."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.runner import StageRunner, backoff_s


def rows(*locators: str) -> pa.Table:
    return pa.Table.from_pylist([{
        "sha256": "%064x" % i, "todo": 1, "asset": json.dumps({"locator": loc}), "inputs": "{}", "attempts": "{}",
        "records": "[]", "failed": 0} for i, loc in enumerate(locators, 1)])


def runner(tmp_path, use: str, **config) -> StageRunner:
    return StageRunner({"name": "misbehaving", "use": use, "params": {}, "config": config, "upstream": None},
                       bit=1, upstream_bits=0, fingerprint="fp", store_url=str(tmp_path / "store"), storage_options={},
                       run_id="test")


def records(out: pa.Table) -> dict[str, dict]:
    return {json.loads(a)["locator"]: json.loads(r)[0] for a, r in zip(out.column("asset").to_pylist(), out.column("records").to_pylist())}


def test_retries_then_succeeds_and_bugs_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.runner.BACKOFF_BASE_S", 0.01)
    r = runner(tmp_path, "tests.foundation.stages_for_tests:Misbehaving")
    out = records(r(rows("ok", f"flaky:{tmp_path / 'n'}", "bug")))
    assert out["ok"]["status"] == "ok" and out["ok"]["attempts"] == 1
    flaky = out[f"flaky:{tmp_path / 'n'}"]
    assert flaky["status"] == "ok" and flaky["attempts"] == 3
    assert out["bug"]["status"] == "failed" and out["bug"]["error_type"] == "internal:ValueError"
    assert "a bug in stage code" in out["bug"]["log"] and out["bug"]["retryable"] is False


def test_isolated_timeout_replaces_worker(tmp_path):
    r = runner(tmp_path, "tests.foundation.stages_for_tests:IsolatedMisbehaving", timeout_s=1, max_attempts=1)
    out = records(r(rows("hang", "ok")))
    assert out["hang"]["status"] == "failed" and out["hang"]["error_type"] == "timeout"
    assert out["ok"]["status"] == "ok"  # the next asset ran in a fresh worker


def test_isolated_crash_is_a_typed_failure(tmp_path):
    r = runner(tmp_path, "tests.foundation.stages_for_tests:IsolatedMisbehaving", max_attempts=2)
    out = records(r(rows("crash", "ok")))
    assert out["crash"]["error_type"] == "worker_crashed" and out["crash"]["attempts"] == 2
    assert out["ok"]["status"] == "ok"


def test_in_thread_timeout(tmp_path):
    r = runner(tmp_path, "tests.foundation.stages_for_tests:Misbehaving", timeout_s=0.5, max_attempts=1)
    out = records(r(rows("hang", "ok")))
    assert out["hang"]["error_type"] == "timeout" and out["ok"]["status"] == "ok"


def test_upstream_failure_blocks_without_a_record(tmp_path):
    r = StageRunner({"name": "misbehaving", "use": "tests.foundation.stages_for_tests:Misbehaving", "params": {},
                     "config": {}, "upstream": None}, bit=2, upstream_bits=1, fingerprint="fp",
                    store_url=str(tmp_path), storage_options={}, run_id="t")
    batch = rows("ok").set_column(1, "todo", pa.array([3])).set_column(6, "failed", pa.array([1]))
    out = r(batch)
    assert json.loads(out.column("records")[0].as_py()) == [] and out.column("failed")[0].as_py() == 3


@pytest.mark.parametrize("attempt", [1, 3, 10])
def test_backoff_is_capped(attempt):
    assert 0 <= backoff_s(attempt, base=0.5, cap=2.0) <= 2.0
