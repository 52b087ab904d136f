"""Security: `query` opens the catalog read-only; asset ids that reach paths are sha256 hex only;
tokens and credentials (an HF token, an AWS secret) are redacted in logs, errors and the catalog."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from catalogs import layout
from catalogs.catalog import Catalog
from catalogs.store import Store

REPO = Path(__file__).resolve().parents[2]
SHA = re.compile(r"[0-9a-f]{64}")


def cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=str(REPO), capture_output=True,
                          text=True, timeout=120, env=env)


def test_query_opens_the_catalog_read_only(tmp_path):
    path = tmp_path / "catalog.duckdb"
    cat = Catalog(path)
    cat.upsert_assets([{"sha256": "a" * 64, "source": "sample", "file_identifier": "x"}])
    for sql in ("DELETE FROM assets", "DROP TABLE assets", "CREATE TABLE evil (x INT)",
                "INSERT INTO assets (sha256, source) VALUES ('b', 'x')", "ATTACH 'other.duckdb' AS o"):
        out = cli("query", sql, "--root", str(tmp_path), "--catalog", str(path))
        assert out.returncode != 0, (sql, out.stdout)
        assert "read-only" in (out.stdout + out.stderr).lower() or "read only" in (out.stdout + out.stderr).lower() \
            or "Catalog Error" in out.stderr or "Error" in out.stderr, out.stderr[-500:]
    assert not (REPO / "other.duckdb").exists() and not (tmp_path / "other.duckdb").exists()
    ok = cli("query", "SELECT count(*) AS n FROM assets", "--root", str(tmp_path), "--catalog", str(path), "--format", "json")
    assert ok.returncode == 0 and '"n": 1' in ok.stdout
    assert Catalog(path).scalar("SELECT count(*) FROM assets") == 1
    ro = Catalog(path, read_only=True)
    with pytest.raises(Exception):
        ro.query("UPDATE assets SET source = 'x'")


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "../" * 21 + "a", "a" * 63 + "/",
                                 "g" * 64, "", "a" * 32 + "\x00" + "a" * 31, "./" + "a" * 62])
def test_asset_ids_in_paths_are_sha256_hex_only(bad):
    for fn in (layout.meshes, layout.voxels, layout.renders, layout.renders_cond, lambda s: layout.raw("sample", s, "glb"),
               lambda s: layout.features("dinov2", s), lambda s: layout.latents("m", s), lambda s: layout.ss_latents("m", s)):
        with pytest.raises(ValueError):
            fn(bad)
    with pytest.raises(ValueError):
        layout.features("../escape", "a" * 64)
    with pytest.raises(ValueError):
        layout.raw("sample", "a" * 64, "glb/../../x")


def test_build_redacts_credentials_and_keeps_ids_sha256(tmp_path):
    hf = "hf_" + secrets.token_hex(12)
    aws = "AwsSecret" + secrets.token_hex(16)
    gh = "ghp_" + secrets.token_hex(12)
    # a listing with a malicious 64-character id: skipped at import, never a path
    listing = tmp_path / "listing.csv"
    evil_id = "../" * 21 + "a"
    pd.DataFrame([{"sha256": evil_id, "file_identifier": "https://github.com/o/r/blob/" + "0" * 40 + "/x.glb",
                   "aesthetic_score": 5.0, "captions": None}]).to_csv(listing, index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "security",
        "sources": [{"name": "sample", "options": {"names": ["box", "cone", "torus"]}},
                    {"name": "objaverse_github", "options": {"listing": str(listing), "cache_dir": str(tmp_path / "cache")}}],
        "stages": ["ingest", {"name": "leaky", "use": "tests.reliability.stages:LeakyStage"}],
        "execution": {"flush_every": 1, "flush_s": 0.1}}))
    root, catalog = tmp_path / "store", tmp_path / "catalog.duckdb"
    ray_tmp = Path(tempfile.mkdtemp(prefix="trs-", dir="/tmp"))
    env = dict(os.environ, HF_TOKEN=hf, AWS_SECRET_ACCESS_KEY=aws, AWS_ACCESS_KEY_ID="AKIATRELLISTEST00001", GITHUB_TOKEN=gh,
               RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="disabled", HOME=str(tmp_path / "home"))
    env.pop("RAY_ADDRESS", None)
    try:
        out = subprocess.run([sys.executable, "-m", "pipeline.job", "--spec", str(spec), "--root", str(root),
                              "--catalog", str(catalog), "--address", "local", "--num-cpus", "2", "--max-restarts", "0",
                              "--storage-option", f"secret_like_but_harmless=1"],
                             cwd=str(REPO), env=env, capture_output=True, text=True, timeout=400)
        logs = out.stdout + out.stderr
        assert out.returncode == 0, logs[-4000:]
        # Ray's own log files of this run (driver, raylet, workers)
        ray_logs = "".join(p.read_text(errors="replace") for p in ray_tmp.rglob("*") if p.is_file()
                           and p.suffix in (".log", ".out", ".err", ".txt") and p.stat().st_size < 50 << 20)
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)

    cat = Catalog(catalog, read_only=True)
    failed = cat.query("SELECT error_type, error, log FROM artifacts WHERE status = 'failed'").to_pylist()
    assert len(failed) == 2 and all(r["error_type"] == "internal:RuntimeError" for r in failed)  # t(orus), c(one)
    assert all("***" in r["error"] for r in failed)
    catalog_text = "\n".join(str(r) for t in ("assets", "artifacts", "artifact_events", "runs", "models")
                             for r in cat.query(f"SELECT * FROM {t}").to_pylist())
    store_blobs = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    for secret in (hf, aws, gh):
        assert secret not in logs, "driver output"
        assert secret not in ray_logs, "ray logs"
        assert secret not in catalog_text and secret.encode() not in catalog.read_bytes(), "catalog"
        assert secret.encode() not in store_blobs, "store"
    assert "worker" in ray_logs.lower() and "***" in ray_logs  # the workers' warnings were logged, redacted
    # ids: the malicious row never became an asset, and every store path names a sha256
    assert cat.scalar("SELECT count(*) FROM assets") == 3
    assert cat.scalar("SELECT count(*) FROM assets WHERE NOT regexp_full_match(sha256, '[0-9a-f]{64}')") == 0
    for rel in Store(str(root)).walk_files():
        if not rel.startswith("catalog/") and rel not in ("metadata.csv", "statistics.txt"):
            assert SHA.search(Path(rel).name), rel
    assert not list(tmp_path.rglob("passwd")) and "not a sha256" in logs
