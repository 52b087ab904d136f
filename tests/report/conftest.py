"""Shared builds for the report tests: a `plan` sample then the rest of the build (one root), and
a fresh full build of the same spec (another root), on the session's real local Ray cluster."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from catalogs.catalog import Catalog
from pipeline.estimate import estimate, run_span
from pipeline.executor import build
from tests.foundation.helpers import THIN_SLICE, spec

SAMPLE_ASSETS = 5


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def demo_runs(tmp_path_factory, ray_session):
    """(root A: plan sample + remaining build, root B: fresh full build) with their reports and spans."""
    base = tmp_path_factory.mktemp("report")
    s = spec(THIN_SLICE)
    a = base / "planned"
    est = estimate(s, str(a), str(a / "catalog.duckdb"), assets=SAMPLE_ASSETS, seed=0)
    rest = build(s, str(a), str(a / "catalog.duckdb"), progress=False)
    b = base / "fresh"
    full = build(s, str(b), str(b / "catalog.duckdb"), progress=False)
    return {
        "spec": s, "estimate": est, "a": a, "b": b, "rest": rest, "full": full,
        "rest_span": run_span(Catalog(a / "catalog.duckdb", read_only=True), rest.run_id),
        "full_span": run_span(Catalog(b / "catalog.duckdb", read_only=True), full.run_id),
    }


@pytest.fixture
def planned_copy(demo_runs, tmp_path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(demo_runs["a"], dst)
    return dst
