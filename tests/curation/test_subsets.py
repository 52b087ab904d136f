"""TRELLIS-500K listings as subsets; coverage by source and failure reason."""

from __future__ import annotations

import json

import pytest

from catalogs.catalog import Catalog
from curation.listing import TRELLIS_500K_RULE, parse_captions
from curation.sources import get_source
from curation.subsets import EVAL_SUBSET, TRAIN_SUBSET, coverage, format_coverage, import_trellis500k
from curation_fixtures import listing_csv, row, write

LIST = "/datasets/JeffreyXiang/TRELLIS-500K/resolve/main"


def test_parse_captions():
    assert parse_captions('["a", "b"]') == (["a", "b"], None)
    assert parse_captions("[]") == (None, None)  # never "[]"
    assert parse_captions(float("nan")) == (None, None)
    assert parse_captions("not json") == (None, "not json")


def test_listing_shape_passthrough(server, tmp_path):
    rows = [row("A" * 64, "0/x.glb", 4.9, captions=("a chair", "wooden chair"), license="CC-BY-NC-4.0", category="chair"),
            row("b" * 64, "0/y.glb", 4.1, captions=None),
            row("A" * 64, "0/x-again.glb"),  # repeated id: kept once (G20)
            row("short", "0/z.glb")]
    url = server.add(f"{LIST}/ABO.csv", listing_csv(rows))
    recs = list(get_source("abo", listing=url).list_assets())
    assert [r.sha256 for r in recs] == ["a" * 64, "b" * 64]
    a = recs[0].as_row()
    assert json.loads(a["captions"]) == ["a chair", "wooden chair"] and a["license"] == "CC-BY-NC-4.0"
    assert json.loads(a["extra"])["category"] == "chair" and a["aesthetic_score"] == 4.9
    assert recs[1].as_row()["captions"] is None
    assert len(server.requests(f"{LIST}/ABO.csv")) == 1
    list(get_source("abo", listing=url).list_assets())  # cached listing: no second request
    assert len(server.requests(f"{LIST}/ABO.csv")) == 1


def test_default_listing_location_is_not_fetched_at_construction():
    src = get_source("hssd")
    assert src.listing_location == "hf://datasets/JeffreyXiang/TRELLIS-500K/HSSD.csv"


def _ingest(cat: Catalog, sha: str, status: str, error_type: str | None = None):
    cat.upsert_artifacts([{"sha256": sha, "stage": "ingest", "variant": "", "status": status, "error_type": error_type,
                           "attempts": 1}])


def test_trellis500k_subset_and_coverage(server, tmp_path):
    cat = Catalog(tmp_path / "cat.duckdb")
    abo = [row(f"{i:064x}", f"{i}/a.glb", 4.5 + i * 0.1) for i in range(5)] + [row("f" * 64, "low.glb", 4.0)]
    hssd = [row(f"{100 + i:064x}", f"objects/{i}.glb", 6.0) for i in range(4)]
    hssd.append(row(f"{0:064x}", "objects/dup.glb", 6.0))  # same id as an ABO asset: cross-source duplicate
    toys = [row(f"{200 + i:064x}", f"t/{i}.blend", 5.0) for i in range(3)]
    sources = {
        "abo": {"listing": server.add(f"{LIST}/ABO.csv", listing_csv(abo))},
        "hssd": {"listing": server.add(f"{LIST}/HSSD.csv", listing_csv(hssd))},
        "toys4k": {"listing": str(write(tmp_path / "Toys4k.csv", listing_csv(toys)))},
    }
    report = import_trellis500k(cat, sources, include=["abo", "hssd", "toys4k"])
    assert report["abo"]["selected"] == 5  # 4.0 < 4.5 is not in the subset (but is in `assets`)
    assert report["hssd"]["cross_source_duplicates"] == 1
    assert cat.scalar("SELECT count(*) FROM assets") == 6 + 4 + 3
    assert cat.scalar("SELECT source FROM assets WHERE sha256 = ?", [f"{0:064x}"]) == "abo"
    assert cat.scalar("SELECT count(*) FROM asset_relations WHERE relation = 'also_listed_in:hssd'") == 1
    rule = json.loads(cat.scalar("SELECT rule FROM subsets WHERE name = ?", [TRAIN_SUBSET]))
    assert rule["sources"]["abo"]["min_aesthetic"] == 4.5 and rule["sources"]["abo"]["expected_assets"] == 4485
    assert cat.scalar("SELECT count(*) FROM subset_members WHERE subset = ?", [EVAL_SUBSET]) == 3
    assert TRELLIS_500K_RULE["objaverse_sketchfab"]["min_aesthetic"] == 5.5

    # ingest outcomes: ok / failed with reasons / never attempted
    _ingest(cat, f"{0:064x}", "ok")
    _ingest(cat, f"{1:064x}", "ok")
    _ingest(cat, f"{2:064x}", "failed", "not_found")
    _ingest(cat, f"{3:064x}", "failed", "checksum_mismatch")
    _ingest(cat, f"{100:064x}", "failed", "auth_required")
    _ingest(cat, f"{101:064x}", "failed", "auth_required")
    _ingest(cat, f"{102:064x}", "ok")
    rows = {r["source"]: r for r in coverage(cat, TRAIN_SUBSET)}
    assert rows["abo"] == {"source": "abo", "listed": 5, "obtained": 2, "missing": 3, "failed": 2, "pending": 1,
                           "failed_by_reason": {"checksum_mismatch": 1, "not_found": 1}}
    assert rows["hssd"]["listed"] == 4 and rows["hssd"]["failed_by_reason"] == {"auth_required": 2}
    text = format_coverage(coverage(cat, TRAIN_SUBSET), TRAIN_SUBSET)
    assert "abo" in text and "auth_required=2" in text and "TOTAL" in text
    total = text.strip().splitlines()[-1].split()
    assert total[:6] == ["TOTAL", "9", "3", "6", "4", "2"]
    with pytest.raises(KeyError):
        coverage(cat, "nope")
