"""The planner: a real build of a seeded sample, measurements per stage, a prediction within 2x.

What is compared (precisely): the estimate predicts the *processing span* of a build — from the
start of its first stage task to the end of its last, read from the run's artifacts
(`updated_at - seconds` .. `updated_at`), so Ray start-up and source listing are not in it — as

    fixed overhead (the sample run's span less the model's own prediction for the sample)
    + pipeline fill (one block's trip through every stage: rows_per_block x sum of s/asset)
    + max(sum over stages of n x s/asset x declared CPUs / cluster CPUs, each stage's parallelism limit)

with s/asset the mean of `artifacts.seconds` over the sample. It is checked against (1) a fresh
build of the whole demo set in another root ("full selection") and (2) the build that completes
the sampled root ("remaining work"), both on the same 2-CPU local cluster.
"""

from __future__ import annotations

import pytest

from catalogs.catalog import Catalog
from curation.sources.sample import SAMPLES
from pipeline.estimate import (
    StageMeasure, compare_with_runs, load_estimates, model_wall, parse_cluster, parse_sample, predict, sample_shas,
    values_selection,
)
from tests.report.conftest import SAMPLE_ASSETS

N = len(SAMPLES)


def test_sample_is_built_for_real_and_measured(demo_runs):
    est = demo_runs["estimate"]
    assert est.sample["assets"] == SAMPLE_ASSETS and est.sample["of"] == N
    assert est.sample["planned"] == {"ingest": SAMPLE_ASSETS, "normalize": SAMPLE_ASSETS, "voxelize": SAMPLE_ASSETS}
    for m in est.stages:
        assert m.measured == m.ok == SAMPLE_ASSETS and m.failed == 0
        assert m.seconds_mean > 0 and m.bytes_per_ok > 0 and m.per_core() > 0 and m.per_gpu() is None
    # the sample's work is kept: the next build only does the rest
    assert demo_runs["rest"].planned == {s: N - SAMPLE_ASSETS for s in ("ingest", "normalize", "voxelize")}
    assert est.remaining["assets"] == N - SAMPLE_ASSETS and est.full["assets"] == N
    assert est.full["disk_bytes"] > est.remaining["disk_bytes"] > 0


def test_estimate_is_stored_in_the_catalog(demo_runs):
    cat = Catalog(demo_runs["a"] / "catalog.duckdb", read_only=True)
    [row] = load_estimates(cat)
    assert row["estimate_id"] == demo_runs["estimate"].estimate_id
    assert {s["stage"] for s in row["per_stage"]} == {"ingest", "normalize", "voxelize"}
    assert row["totals"]["full"]["wall_s"] > 0 and row["cluster"]["cpus"] == 2
    [cmp] = compare_with_runs(cat, row)
    assert cmp["run_id"] == demo_runs["rest"].run_id and cmp["span_s"] > 0


def test_prediction_within_2x_of_a_fresh_full_build(demo_runs):
    predicted = demo_runs["estimate"].full["wall_s"]
    measured = demo_runs["full_span"]["span_s"]
    print(f"full: predicted {predicted:.2f} s, measured span {measured:.2f} s, ratio {measured / predicted:.2f}")
    assert demo_runs["full_span"]["records"] == 3 * N
    assert 0.5 <= measured / predicted <= 2.0


def test_prediction_within_2x_of_the_remaining_build(demo_runs):
    predicted = demo_runs["estimate"].remaining["wall_s"]
    measured = demo_runs["rest_span"]["span_s"]
    print(f"remaining: predicted {predicted:.2f} s, measured span {measured:.2f} s, ratio {measured / predicted:.2f}")
    assert 0.5 <= measured / predicted <= 2.0


def test_cli_plan_on_an_already_built_sample(demo_runs, planned_copy, tmp_path):
    """Everything is built already: no sample run, the measurements come from the existing artifacts."""
    from click.testing import CliRunner

    from pipeline.cli import main
    from tests.foundation.helpers import write_spec

    path = write_spec(tmp_path / "spec.yaml", demo_runs["spec"])
    res = CliRunner().invoke(main, ["plan", "--spec", str(path), "--root", str(planned_copy), "--sample", "10%",
                                    "--no-progress", "--cluster", "cpus=512,gpus=32"])
    assert res.exit_code == 0, res.output
    assert "assets/s/core" in res.output and "full selection: 20 assets" in res.output
    assert "cluster: 512 CPUs, 32 GPUs" in res.output and "remaining work: 0 assets -> wall 0.0 s" in res.output
    assert "sample was already built" in res.output
    cat = Catalog(planned_copy / "catalog.duckdb", read_only=True)
    assert cat.scalar("SELECT count(*) FROM estimates") == 2
    last = load_estimates(cat)[-1]
    assert last["cluster"] == {"cpus": 512.0, "gpus": 32.0}
    assert all(s["measured"] == 2 for s in last["per_stage"])


# -- pure parts ------------------------------------------------------------------------------------
def test_parsers():
    assert parse_sample("1%") == pytest.approx(0.01) and parse_sample("0.05") == 0.05 and parse_sample(5) == 0.05
    with pytest.raises(ValueError):
        parse_sample("0%")
    assert parse_cluster("cpus=512,gpus=32") == {"cpus": 512.0, "gpus": 32.0}
    assert parse_cluster("cpus=8") == {"cpus": 8.0, "gpus": 0.0}
    with pytest.raises(ValueError):
        parse_cluster("cpus=8,tpus=2")


def test_sample_is_seeded_and_bounded():
    shas = [f"{i:064x}" for i in range(1000)]
    assert sample_shas(shas, 0.01, None, 1) == sample_shas(list(reversed(shas)), 0.01, None, 1)
    assert len(sample_shas(shas, 0.01, None, 1)) == 10 and len(sample_shas(shas[:3], 0.01, None, 0)) == 1
    assert sample_shas(shas, 0.01, None, 1) != sample_shas(shas, 0.01, None, 2)
    assert len(sample_shas(shas, 0.5, 7, 0)) == 7
    assert "VALUES" in values_selection(shas[:2])
    with pytest.raises(ValueError):
        values_selection(["x' OR 1=1 --"])


def _m(stage, seconds, cpus=1.0, gpus=0.0, bytes_=1000.0):
    return StageMeasure(stage, "", 10, 10, 0, seconds, seconds, seconds, bytes_, cpus, gpus)


def test_model_bottlenecks():
    ms = [_m("render", 60.0, cpus=1), _m("features", 2.0, cpus=1, gpus=1), _m("voxelize", 1.0, cpus=0.5)]
    counts = {m.stage: 500_000 for m in ms}
    p = predict(ms, counts, 500_000, {"cpus": 512, "gpus": 32}, overhead_s=0.0)
    # render dominates the CPU pool: 500k x (60 x 1 + 2 x 1 + 1 x 0.5) CPU-s / 512 CPUs
    assert p["bound_by"] == "CPU pool" and p["bottleneck_stage"] == "render"
    assert p["steady_s"] == pytest.approx(500_000 * 62.5 / 512)
    assert p["gpu_hours"] == pytest.approx(500_000 * 2 / 3600)
    assert p["disk_bytes"] == pytest.approx(3 * 500_000 * 1000)
    # a GPU-starved cluster: the GPU pool decides
    g = predict(ms, counts, 500_000, {"cpus": 10_000, "gpus": 1}, overhead_s=5.0)
    assert g["bound_by"] == "GPU pool" and g["bottleneck_stage"] == "features" and g["overhead_s"] == 5.0
    # few assets, many CPUs: one slow asset decides (a stage's own parallelism limit)
    w = model_wall([_m("render", 60.0)], {"render": 3}, 512, 0, 3)
    assert w["bound_by"].startswith("stage render") and w["steady_s"] == pytest.approx(60.0)
    # a GPU stage on a cluster without GPUs runs on CPU
    c = predict([_m("features", 2.0, cpus=1, gpus=1)], {"features": 100}, 100, {"cpus": 10, "gpus": 0}, 0.0)
    assert c["gpu_hours"] == 0 and c["cpu_hours"] == pytest.approx(200 / 3600)
