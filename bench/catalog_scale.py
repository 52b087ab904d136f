"""Catalog at scale: planning, upserts and stale-set queries over a real DuckDB catalog file.

Builds a catalog of N synthetic assets x 7 stages of artifacts entirely in DuckDB SQL (`range()` +
hashing), with a mix per (asset, stage) pair of current, stale, failed-retryable, failed-permanent
and missing artifacts, then measures

  * `catalogs.planner.plan()` over every asset (goal: 10M assets <= 10 s),
  * `Catalog.upsert_artifacts` into the big table, batches of 10k and 100k records, half of them
    replacing existing rows and half new (goal: >= 200k records/s),
  * the stale-set query for one stage (count, and the list of sha256), and `planner.status()`.

    python -m bench.catalog_scale                     # 1M and 10M -> bench/results/catalog_scale.json
    python -m bench.catalog_scale --sizes 100000 --out /tmp/x.json

The catalog file lives under --tmp (default /tmp) and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.common import write_result
from catalogs.catalog import ARTIFACT_FIELDS, Catalog
from catalogs.planner import PlannedStage, plan, status

GOAL_PLAN_10M_S = 10.0
GOAL_UPSERT_PER_S = 200_000

# A TRELLIS-like graph of 7 stages (topological order), with model variants where TRELLIS has them.
STAGES = [
    PlannedStage("ingest", "", "fp_ingest_v1", 3),
    PlannedStage("render", "", "fp_render_v1", 3, ("ingest",)),
    PlannedStage("render_cond", "", "fp_render_cond_v1", 3, ("ingest",)),
    PlannedStage("voxelize", "", "fp_voxelize_v1", 3, ("render",)),
    PlannedStage("features", "dinov2_vitl14_reg", "fp_features_v1", 3, ("render", "voxelize")),
    PlannedStage("ss_latent", "ss_enc_conv3d_16l8_fp16", "fp_ss_latent_v1", 3, ("voxelize",)),
    PlannedStage("slat", "dinov2_vitl14_reg_slat_enc_swin8_B_64l8_fp16", "fp_slat_v1", 3, ("features",)),
]
STALE_STAGE = "voxelize"

# Per (asset, stage) pair, by hash bucket out of 1000.
MIX = {"current": 800, "stale": 80, "failed_retryable": 30, "failed_permanent": 20, "missing": 70}
assert sum(MIX.values()) == 1000


def _stages_values() -> str:
    return ", ".join(f"({k}, '{s.name}', '{s.variant}', '{s.fingerprint}')" for k, s in enumerate(STAGES))


def _bucket_case() -> str:
    edges, acc = [], 0
    for name, share in MIX.items():
        acc += share
        edges.append(f"WHEN b < {acc} THEN '{name}'")
    return "CASE " + " ".join(edges) + " END"


def build_catalog(path: Path, n_assets: int, chunk: int = 1_000_000) -> dict[str, Any]:
    """Create the catalog through `Catalog` (real schema and migrations), then fill it in SQL."""
    t0 = time.perf_counter()
    catalog = Catalog(path)
    with catalog.connect() as con:
        con.execute("SET preserve_insertion_order = false")
        # Fill a constraint-free copy, then add the primary key once: building the index in bulk is
        # much faster than maintaining it row by row for 70M synthetic rows (data generation only).
        con.execute("CREATE TABLE artifacts_fill AS SELECT * FROM artifacts LIMIT 0")
        for lo in range(0, n_assets, chunk):
            hi = min(n_assets, lo + chunk)
            con.execute(f"""
                INSERT INTO assets (sha256, source, file_identifier, locator, format, size_bytes, license, aesthetic_score)
                SELECT sha256('synthetic-' || i), 'synthetic', 'synthetic/' || i || '.glb', 'mem://raw/' || i,
                       'glb', 1000 + hash(i, 'size') % 10000000, 'CC-BY-4.0', (hash(i, 'score') % 1000) / 100.0
                FROM range({lo}, {hi}) t(i)
            """)
            con.execute(f"""
                INSERT INTO artifacts_fill ({", ".join(ARTIFACT_FIELDS)})
                WITH pairs AS (
                    SELECT i, sha256('synthetic-' || i) AS sha256, s.stage, s.variant, s.fp,
                           hash(i, s.k) % 1000 AS b
                    FROM range({lo}, {hi}) t(i) CROSS JOIN (VALUES {_stages_values()}) s(k, stage, variant, fp)
                ), kinds AS (SELECT *, {_bucket_case()} AS kind FROM pairs)
                SELECT sha256, stage, variant,
                       CASE kind WHEN 'stale' THEN 'fp_old' ELSE fp END,
                       CASE WHEN kind LIKE 'failed%' THEN 'failed' ELSE 'ok' END,
                       CASE WHEN kind LIKE 'failed%' THEN NULL ELSE stage || '/' || sha256 END,
                       CASE WHEN kind LIKE 'failed%' THEN NULL ELSE 1000 + b * 97 END,
                       CASE WHEN stage = 'voxelize' AND kind NOT LIKE 'failed%' THEN '{{"num_voxels": ' || (b * 37) || '}}' END,
                       CASE kind WHEN 'failed_retryable' THEN 'timeout' WHEN 'failed_permanent' THEN 'corrupt_file' END,
                       CASE WHEN kind LIKE 'failed%' THEN 'synthetic failure' END,
                       NULL,
                       CASE kind WHEN 'failed_permanent' THEN 1 WHEN 'failed_retryable' THEN 1 ELSE 1 END,
                       CASE kind WHEN 'failed_retryable' THEN true WHEN 'failed_permanent' THEN false END,
                       'bench-build', 'node0', b / 100.0, TIMESTAMP '2026-01-01 00:00:00'
                FROM kinds WHERE kind <> 'missing'
            """)
        con.execute("DROP TABLE artifacts")
        con.execute("ALTER TABLE artifacts_fill RENAME TO artifacts")
        con.execute("ALTER TABLE artifacts ADD PRIMARY KEY (sha256, stage, variant)")
        counts = dict(con.execute("SELECT status, count(*) FROM artifacts GROUP BY ALL").fetchall())
        n_art = con.execute("SELECT count(*) FROM artifacts").fetchone()[0]
        con.execute("CHECKPOINT")
    return {"seconds": round(time.perf_counter() - t0, 2), "assets": n_assets, "artifacts": int(n_art),
            "artifacts_by_status": {k: int(v) for k, v in counts.items()},
            "mix_per_pair_permille": MIX, "file_bytes": path.stat().st_size}


class PeakRSS:
    """Samples this process's RSS in a thread; `.peak` in bytes."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.proc, self.every, self.peak = psutil.Process(), every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRSS:
        self.peak = self.proc.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def time_plan(catalog: Catalog, n_assets: int, repeats: int) -> dict[str, Any]:
    times, rows, peak = [], 0, 0
    for _ in range(repeats):
        gc.collect()
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            todo = plan(catalog, STAGES)
            times.append(time.perf_counter() - t0)
        rows, peak = todo.num_rows, max(peak, rss.peak)
        del todo
    best = min(times)
    return {"seconds": [round(t, 3) for t in times], "best_s": round(best, 3),
            "us_per_asset": round(best / n_assets * 1e6, 3), "assets_with_work": rows,
            "driver_peak_rss_mib": round(peak / 2**20)}


def time_status(catalog: Catalog, n_assets: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows = status(catalog, STAGES)
    dt = time.perf_counter() - t0
    return {"seconds": round(dt, 3), "us_per_asset": round(dt / n_assets * 1e6, 3),
            "rows": {r["stage"]: {k: v for k, v in r.items() if k not in ("stage", "variant")} for r in rows}}


def time_stale_queries(catalog: Catalog, repeats: int = 3) -> dict[str, Any]:
    s = next(p for p in STAGES if p.name == STALE_STAGE)
    where = "stage = ? AND variant = ? AND status = 'ok' AND fingerprint IS DISTINCT FROM ?"
    args = [s.name, s.variant, s.fingerprint]
    out: dict[str, Any] = {"stage": s.name}
    for label, sql in (("count", f"SELECT count(*) FROM artifacts WHERE {where}"),
                       ("select_sha256", f"SELECT sha256 FROM artifacts WHERE {where}")):
        times = []
        for _ in range(repeats):
            with catalog.connect() as con:  # connection set-up counted: that is what a query pays
                t0 = time.perf_counter()
                rel = con.sql(sql, params=args)
                res = rel.to_arrow_table() if label != "count" else rel.fetchall()[0]
                times.append(time.perf_counter() - t0)
        n = res[0] if label == "count" else res.num_rows
        out[label] = {"seconds": [round(t, 4) for t in times], "best_s": round(min(times), 4), "rows": int(n)}
    return out


def upsert_batch(con_catalog: Catalog, size: int, seed: int) -> Any:
    """`size` artifact records as an Arrow table: half replace existing (stale) rows, half are new."""
    s = next(p for p in STAGES if p.name == STALE_STAGE)
    n_assets = con_catalog.scalar("SELECT count(*) FROM assets")
    half = size // 2
    with con_catalog.connect() as con:
        return con.sql(f"""
            WITH existing AS (
                SELECT sha256('synthetic-' || ((i * 7919 + {seed} * 104729) % {n_assets})) AS sha256, '{s.name}' AS stage,
                       '{s.variant}' AS variant
                FROM range({half}) t(i)
            ), fresh AS (
                SELECT sha256('new-{seed}-' || i) AS sha256, '{s.name}' AS stage, '{s.variant}' AS variant
                FROM range({size - half}) t(i)
            ), keys AS (SELECT DISTINCT * FROM (SELECT * FROM existing UNION ALL SELECT * FROM fresh))
            SELECT sha256, stage, variant, '{s.fingerprint}' AS fingerprint, 'ok' AS status,
                   'voxels/' || sha256 || '.ply' AS uri, 123456::BIGINT AS bytes, '{{"num_voxels": 4321}}' AS metrics,
                   NULL::VARCHAR AS error_type, NULL::VARCHAR AS error, NULL::VARCHAR AS log, 1::INTEGER AS attempts,
                   NULL::BOOLEAN AS retryable, 'bench-upsert' AS run_id, 'node0' AS node_id, 0.5::DOUBLE AS seconds,
                   TIMESTAMP '2026-01-02 00:00:00' AS updated_at
            FROM keys
        """).to_arrow_table()


def time_upserts(catalog: Catalog, sizes: tuple[int, ...], repeats: int) -> dict[str, Any]:
    """Upserts as a build does them: one held writer connection, batch after batch.

    The first batch of a build pays for loading the touched parts of the primary-key index; it is
    reported separately (`first_batch`), the rate is the steady state after it.
    """
    from catalogs.catalog import ARTIFACT_SCHEMA

    out: dict[str, Any] = {}
    seed = 0
    with catalog.writing():
        seed += 1
        warm = upsert_batch(catalog, 10_000, seed).cast(ARTIFACT_SCHEMA).to_pylist()
        t0 = time.perf_counter()
        catalog.upsert_artifacts(warm)
        out["first_batch"] = {"records": len(warm), "seconds": round(time.perf_counter() - t0, 3)}
        for size in sizes:
            runs = []
            for _ in range(repeats):
                seed += 1
                records = upsert_batch(catalog, size, seed).cast(ARTIFACT_SCHEMA).to_pylist()  # the executor's path
                t0 = time.perf_counter()
                n = catalog.upsert_artifacts(records)
                dt = time.perf_counter() - t0
                runs.append({"records": n, "seconds": round(dt, 3), "records_per_s": round(n / dt)})
            best = max(r["records_per_s"] for r in runs)
            out[str(size)] = {"runs": runs, "best_records_per_s": best,
                              "median_records_per_s": sorted(r["records_per_s"] for r in runs)[len(runs) // 2],
                              "us_per_record": round(1e6 / best, 3)}
    return out


def run_size(n_assets: int, tmp: Path, plan_repeats: int, upsert_sizes: tuple[int, ...], upsert_repeats: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"trellis-catalog-{n_assets}-", dir=tmp))
    path = workdir / "catalog.duckdb"
    try:
        print(f"[{n_assets:,}] building ...", file=sys.stderr, flush=True)
        built = build_catalog(path, n_assets)
        print(f"[{n_assets:,}] built in {built['seconds']} s, {built['artifacts']:,} artifacts, "
              f"{built['file_bytes'] / 2**30:.2f} GiB", file=sys.stderr, flush=True)
        catalog = Catalog(path)
        res: dict[str, Any] = {"build": built}
        res["plan"] = time_plan(catalog, n_assets, plan_repeats)
        print(f"[{n_assets:,}] plan: {res['plan']}", file=sys.stderr, flush=True)
        res["status"] = time_status(catalog, n_assets)
        res["stale_query"] = time_stale_queries(catalog)
        print(f"[{n_assets:,}] stale: {res['stale_query']}", file=sys.stderr, flush=True)
        res["upsert"] = time_upserts(catalog, upsert_sizes, upsert_repeats)
        print(f"[{n_assets:,}] upsert: {res['upsert']}", file=sys.stderr, flush=True)
        return res
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--plan-repeats", type=int, default=3)
    ap.add_argument("--upsert-sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--upsert-repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    figures: dict[str, Any] = {"stages": [s.name for s in STAGES], "sizes": {}}
    for n in args.sizes:
        figures["sizes"][str(n)] = run_size(n, Path(args.tmp), args.plan_repeats, tuple(args.upsert_sizes), args.upsert_repeats)
        write_result("catalog_scale", {**figures, "partial": True}, args.out)  # a long 10M run keeps the 1M figures
    biggest = figures["sizes"][str(max(args.sizes))]
    figures["goals"] = {
        "plan_10M_max_s": GOAL_PLAN_10M_S, "upsert_min_records_per_s": GOAL_UPSERT_PER_S,
        "plan_10M_s": figures["sizes"].get("10000000", {}).get("plan", {}).get("best_s"),
        "plan_10M_met": (figures["sizes"]["10000000"]["plan"]["best_s"] <= GOAL_PLAN_10M_S) if "10000000" in figures["sizes"] else None,
        "upsert_best_records_per_s": {k: v["best_records_per_s"] for k, v in biggest["upsert"].items() if k != "first_batch"},
        "upsert_met_at_largest_catalog": {k: v["best_records_per_s"] >= GOAL_UPSERT_PER_S
                                          for k, v in biggest["upsert"].items() if k != "first_batch"},
    }
    out = write_result("catalog_scale", figures, args.out)
    print(f"wrote {out}", file=sys.stderr)
    return figures


if __name__ == "__main__":
    main()
