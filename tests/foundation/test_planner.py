"""Planner: exactly the missing, stale and failed-retryable pairs, with downstream propagation."""

from __future__ import annotations

from catalogs.catalog import Catalog, utcnow
from catalogs.planner import PlannedStage, plan, stage_order, status
from pipeline.spec import plan_stages
from tests.foundation.helpers import THIN_SLICE, spec

A, B, C, D, E = ("%064x" % i for i in range(1, 6))
STAGES = [PlannedStage("ingest", "", "fi", 3), PlannedStage("normalize", "", "fn", 3, ("ingest",)),
          PlannedStage("voxelize", "", "fv", 3, ("normalize",))]


def rec(sha, stage, fp, status="ok", attempts=1, retryable=None):
    return {"sha256": sha, "stage": stage, "variant": "", "fingerprint": fp, "status": status, "attempts": attempts,
            "retryable": retryable, "updated_at": utcnow()}


def planned(catalog, **kw):
    t = plan(catalog, STAGES, **kw)
    return dict(zip(t.column("sha256").to_pylist(), t.column("todo").to_pylist()))


def test_plan_states(tmp_path):
    c = Catalog(tmp_path / "c.duckdb")
    c.upsert_assets([{"sha256": s, "source": "t"} for s in (A, B, C, D, E)])
    c.upsert_artifacts([
        # A: everything current
        rec(A, "ingest", "fi"), rec(A, "normalize", "fn"), rec(A, "voxelize", "fv"),
        # B: voxelize stale
        rec(B, "ingest", "fi"), rec(B, "normalize", "fn"), rec(B, "voxelize", "OLD"),
        # C: normalize failed permanently -> voxelize blocked, nothing to do
        rec(C, "ingest", "fi"), rec(C, "normalize", "fn", "failed", retryable=False),
        # D: ingest failed retryably (1 of 3 attempts) -> everything again
        rec(D, "ingest", "fi", "failed", retryable=True),
        # E: nothing yet
    ])
    assert planned(c) == {B: 0b100, D: 0b111, E: 0b111}
    assert planned(c, retry_failed=True) == {B: 0b100, C: 0b110, D: 0b111, E: 0b111}
    assert planned(c, selection=f"SELECT sha256 FROM assets WHERE sha256 = '{B}'") == {B: 0b100}
    rows = {r["stage"]: r for r in status(c, STAGES)}
    assert rows["voxelize"] == {"stage": "voxelize", "variant": "", "current": 1, "stale": 1, "failed": 0,
                                "blocked": 1, "missing": 2}
    assert rows["ingest"]["failed"] == 1 and rows["normalize"]["failed"] == 1


def test_retry_cap(tmp_path):
    c = Catalog(tmp_path / "c.duckdb")
    c.upsert_assets([{"sha256": A, "source": "t"}])
    c.upsert_artifacts([rec(A, "ingest", "fi", "failed", attempts=3, retryable=True)])
    assert planned(c) == {}


def test_upstream_rerun_forces_downstream(tmp_path):
    c = Catalog(tmp_path / "c.duckdb")
    c.upsert_assets([{"sha256": A, "source": "t"}])
    c.upsert_artifacts([rec(A, "ingest", "OLD"), rec(A, "normalize", "fn"), rec(A, "voxelize", "fv")])
    assert planned(c) == {A: 0b111}


def test_fingerprints_change_only_downstream():
    base = {p.name: p.fingerprint for p in plan_stages(spec(THIN_SLICE).build_stages())}
    changed = spec(["ingest", "normalize", {"name": "voxelize", "params": {"resolution": 32}}])
    new = {p.name: p.fingerprint for p in plan_stages(changed.build_stages())}
    assert base["ingest"] == new["ingest"] and base["normalize"] == new["normalize"]
    assert base["voxelize"] != new["voxelize"]
    # run-time config never enters the fingerprint
    cfg = spec(["ingest", "normalize", "voxelize"], sources=[{"name": "local", "options": {"path": "/elsewhere"}}])
    assert {p.name: p.fingerprint for p in plan_stages(cfg.build_stages())} == base


def test_stage_order_detects_cycles():
    assert stage_order({"c": ("b",), "b": ("a",), "a": ()}) == ["a", "b", "c"]
    import pytest

    with pytest.raises(ValueError, match="cycle"):
        stage_order({"a": ("b",), "b": ("a",)})
