"""Orchestration overhead: no-op stages over synthetic assets through the real Ray Data executor.

Inserts N synthetic `assets` rows straight into a fresh catalog (the spec has `sources: []`), then
runs `pipeline.executor.build` with a chain of no-op stages (noop_1 -> noop_2 -> noop_3) on a local
Ray cluster. Reports assets/s end to end (Ray start-up included) and excluding Ray start-up (goal:
>= 500 assets/s on 2 cores), and a second, warm run (params changed so every stage is stale), while
a sampler thread records driver RSS, the RSS of all Ray processes and Ray object-store usage.

    python -m bench.orchestration                    # 10k assets -> bench/results/orchestration.json
    python -m bench.orchestration --assets 2000 --out /tmp/o.json
"""

from __future__ import annotations

import argparse
import logging
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
from catalogs.catalog import Catalog

GOAL_ASSETS_PER_S = 500


def spec_dict(n_stages: int, tag: str, num_cpus: int) -> dict[str, Any]:
    stages = [{"name": f"noop_{i}", "use": "noop", "params": {"tag": tag},
               **({"upstream": [f"noop_{i - 1}"]} if i > 1 else {})} for i in range(1, n_stages + 1)]
    return {"name": "bench-orchestration", "sources": [], "stages": stages, "execution": {"num_cpus": num_cpus}}


def insert_assets(catalog: Catalog, n: int) -> None:
    with catalog.connect() as con:
        con.execute(f"""
            INSERT INTO assets (sha256, source, file_identifier, locator, format, size_bytes, license)
            SELECT sha256('orchestration-' || i), 'synthetic', 'synthetic/' || i || '.glb', 'mem://raw/' || i,
                   'glb', 1000 + i, 'CC0'
            FROM range({n}) t(i)
        """).fetchall()


class Sampler:
    """Peak driver RSS, peak summed RSS of Ray's processes, peak object-store (plasma) usage."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every = every_s
        self.driver = psutil.Process()
        self.peak = {"driver_rss_mib": 0.0, "ray_processes_rss_mib": 0.0, "object_store_used_mib": 0.0}
        self.samples = 0
        self._raylet: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ray_rss(self) -> float:
        total = 0
        for p in self.driver.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    def _plasma(self) -> float:
        """Bytes used in the object store (plasma) of the local node, from the raylet's stats."""
        try:
            import ray
            from ray._private.internal_api import node_stats

            if self._raylet is None:
                node = next(n for n in ray.nodes() if n["Alive"])
                self._raylet = (node["NodeManagerAddress"], node["NodeManagerPort"])
            reply = node_stats(*self._raylet, include_memory_info=False)
            return reply.store_stats.object_store_bytes_used / 2**20
        except Exception:
            return 0.0

    def sample(self) -> None:
        values = {"driver_rss_mib": self.driver.memory_info().rss / 2**20, "ray_processes_rss_mib": self._ray_rss()}
        import ray

        if ray.is_initialized():
            values["object_store_used_mib"] = self._plasma()
        for k, v in values.items():
            self.peak[k] = max(self.peak[k], round(v, 1))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:
                pass
            self._stop.wait(self.every)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run(n_assets: int, n_stages: int, num_cpus: int, tmp: Path) -> dict[str, Any]:
    import ray

    from pipeline.executor import build, init_ray
    from pipeline.spec import PipelineSpec

    work = Path(tempfile.mkdtemp(prefix="trellis-orchestration-", dir=tmp))
    try:
        catalog_path, store_url = work / "catalog.duckdb", str(work / "store")
        insert_assets(Catalog(catalog_path), n_assets)
        out: dict[str, Any] = {"assets": n_assets, "stages": n_stages, "num_cpus": num_cpus}
        with Sampler() as sampler:
            t0 = time.perf_counter()
            init_ray(num_cpus=num_cpus)
            ray_start = time.perf_counter() - t0
            out["ray_start_s"] = round(ray_start, 2)
            for label, tag in (("cold", "a"), ("warm", "b")):
                t1 = time.perf_counter()
                report = build(PipelineSpec.from_dict(spec_dict(n_stages, tag, num_cpus)), store_url, str(catalog_path),
                               num_cpus=num_cpus, progress=False)
                dt = time.perf_counter() - t1
                ok = sum(report.ok.values())
                assert ok == n_assets * n_stages and not report.failed, (report.ok, report.failed)
                out[label] = {
                    "seconds": round(dt, 2), "assets_per_s": round(n_assets / dt, 1),
                    "ms_per_asset": round(dt / n_assets * 1e3, 3),
                    "us_per_asset_stage": round(dt / (n_assets * n_stages) * 1e6, 1),
                    "records_ok": ok, "planned": report.planned,
                }
                if label == "cold":
                    out["cold"]["end_to_end_with_ray_start_s"] = round(dt + ray_start, 2)
                    out["cold"]["end_to_end_assets_per_s"] = round(n_assets / (dt + ray_start), 1)
                print(f"{label}: {out[label]}", file=sys.stderr, flush=True)
            sampler.sample()
        out["memory_peak"] = {**sampler.peak, "samples": sampler.samples}
        with Catalog(catalog_path, read_only=True).connect() as con:
            out["catalog_check"] = {
                "artifacts": con.execute("SELECT count(*) FROM artifacts").fetchone()[0],
                "ok": con.execute("SELECT count(*) FROM artifacts WHERE status = 'ok'").fetchone()[0],
            }
        ray.shutdown()
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--assets", type=int, default=10_000)
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--tmp", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    figures = run(args.assets, args.stages, args.num_cpus, Path(args.tmp))
    figures["goal"] = {"min_assets_per_s": GOAL_ASSETS_PER_S,
                       "met_excluding_ray_start": figures["cold"]["assets_per_s"] >= GOAL_ASSETS_PER_S,
                       "met_warm": figures["warm"]["assets_per_s"] >= GOAL_ASSETS_PER_S}
    out = write_result("orchestration", figures, args.out)
    print(f"wrote {out}", file=sys.stderr)
    return figures


if __name__ == "__main__":
    main()
