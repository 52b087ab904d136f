"""Re-encoding on a real local Ray cluster: swapping a checkpoint re-runs exactly what it makes stale."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from catalogs.catalog import Catalog
from catalogs.planner import status
from encode.reencode import reencode_spec_dict
from pipeline.cli import main as cli
from pipeline.executor import build
from pipeline.spec import PipelineSpec, plan_stages
from tests.foundation.helpers import spec

pytestmark = pytest.mark.usefixtures("ray_session")
N = 2
SELECT = f"SELECT sha256 FROM assets ORDER BY sha256 LIMIT {N}"
UPSTREAM_DIRS = ("renders", "voxels", "features", "ss_latents")


def encode_spec(models, dino="dinov2", slat="slat_enc") -> PipelineSpec:
    s = spec(["ingest", "normalize",
              {"name": "render", "use": "tests.encode.fake_render:FakeRenderStage", "params": {"num_views": 3}},
              {"name": "voxelize", "params": {"resolution": 64, "input": "render"}},
              {"name": "features", "params": {"model": models[dino]}, "config": {"batch_views": 4}},
              {"name": "ss_latent", "params": {"model": models["ss_enc"]}},
              {"name": "slat", "params": {"model": models[slat], "feature_model": "dinov2_tiny"}}])
    s.selection = SELECT
    return s


def snapshot(root) -> dict[str, int]:
    out = {}
    for d in UPSTREAM_DIRS:
        for dirpath, _, files in os.walk(root / d):
            for f in files:
                p = os.path.join(dirpath, f)
                out[p] = os.stat(p).st_mtime_ns
    return out


def fingerprints(cat: Catalog, stages=("render", "voxelize", "features", "ss_latent")) -> dict:
    rows = cat.query("SELECT sha256, stage, variant, fingerprint FROM artifacts WHERE status = 'ok'").to_pylist()
    return {(r["sha256"], r["stage"], r["variant"]): r["fingerprint"] for r in rows if r["stage"] in stages}


def by_stage(cat: Catalog, s: PipelineSpec) -> dict[str, dict]:
    return {r["stage"]: r for r in status(cat, plan_stages(s.build_stages()), SELECT)}


def test_reencode_swaps_only_what_changed(models, tmp_path):
    root = tmp_path / "store"
    cat_path = str(root / "catalog.duckdb")
    first = encode_spec(models)
    report = build(first, str(root), cat_path, progress=False)
    assert report.failed == {}, report.failed
    assert all(report.ok[s] == N for s in ("render", "voxelize", "features", "ss_latent", "slat")), report.ok
    cat = Catalog(cat_path)
    fps, files = fingerprints(cat), snapshot(root)
    models_rows = cat.query("SELECT stage, variant, pretrained FROM models ORDER BY stage").to_pylist()
    assert {(r["stage"], r["variant"]) for r in models_rows} == {
        ("features", "dinov2_tiny"), ("ss_latent", "ss_enc_tiny"), ("slat", "dinov2_tiny_slat_enc_tiny")}
    assert not any(r["pretrained"] for r in models_rows)

    # 1. a second SLat checkpoint with another name: a new variant beside the old one; only SLat runs
    res = CliRunner().invoke(cli, ["reencode", "--stage", "slat", "--model", models["slat_seed1"], "--root", str(root)])
    assert res.exit_code == 0, res.output
    assert f"'slat': {N}" in res.output and f"'features': {N}" not in res.output
    assert fingerprints(cat) == fps and snapshot(root) == files
    variants = cat.query("SELECT variant, count(*) n FROM artifacts WHERE stage = 'slat' AND status = 'ok' "
                         "GROUP BY variant ORDER BY variant").to_pylist()
    assert variants == [{"variant": "dinov2_tiny_slat_enc_tiny", "n": N}, {"variant": "dinov2_tiny_slat_enc_tiny_b", "n": N}]
    assert len(list((root / "latents" / "dinov2_tiny_slat_enc_tiny").iterdir())) == N
    assert len(list((root / "latents" / "dinov2_tiny_slat_enc_tiny_b").iterdir())) == N
    cols = cat.query("SELECT * FROM metadata LIMIT 1").column_names
    assert "latent_dinov2_tiny_slat_enc_tiny" in cols and "latent_dinov2_tiny_slat_enc_tiny_b" in cols

    # 2. same name, other weights: the existing rows are stale (the planner re-runs exactly those)
    same = PipelineSpec.from_dict(reencode_spec_dict(first.to_dict(), "slat", models["slat_seed1_same_name"]))
    st = by_stage(cat, same)
    assert st["slat"]["stale"] == N and all(st[s]["current"] == N for s in ("render", "voxelize", "features", "ss_latent"))

    # 3. other DINOv2 weights: features and the SLat fed by them are stale; SS latents, renders, voxels are not
    dino = PipelineSpec.from_dict(reencode_spec_dict(same.to_dict(), "features", models["dinov2_seed1"]))
    st = by_stage(cat, dino)
    assert st["features"]["stale"] == N and st["slat"]["stale"] == N
    assert all(st[s]["current"] == N for s in ("render", "voxelize", "ss_latent"))
    r3 = build(dino, str(root), cat_path, progress=False)
    assert {k: v for k, v in r3.planned.items() if v} == {"features": N, "slat": N} and not r3.failed
    after = fingerprints(cat, ("render", "voxelize", "ss_latent"))
    assert after == {k: v for k, v in fps.items() if k[1] in ("render", "voxelize", "ss_latent")}
    assert {(r["stage"], r["variant"]) for r in cat.query("SELECT stage, variant FROM models").to_pylist()} >= {
        ("features", "dinov2_tiny"), ("slat", "dinov2_tiny_slat_enc_tiny_b")}
    assert cat.scalar("SELECT count(DISTINCT weights_sha256) FROM models WHERE stage = 'features'") == 2

    # statistics over the current latents of one variant, recorded with their selection
    res = CliRunner().invoke(cli, ["stats", "--variant", "dinov2_tiny_slat_enc_tiny", "--root", str(root), "--select", SELECT])
    assert res.exit_code == 0, res.output
    assert (root / "latents" / "dinov2_tiny_slat_enc_tiny" / "stats.json").exists()
    assert cat.scalar("SELECT n_used FROM latent_stats") == N
