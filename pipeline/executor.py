"""The build: import sources, plan from fingerprints, stream every stage on Ray Data, upsert records.

One Ray Data pipeline holds all stages (`map_batches` with an actor pool per stage), so asset B
can be voxelizing while asset A is still rendering; Ray Data's backpressure bounds the work in
flight. Each block row is one asset carrying its plan bitmask, upstream artifacts and the records
produced so far. The driver consumes the output stream and is the only catalog writer: it upserts
records in batches and appends each batch to a Parquet record log in the store, so a crash loses at
most the records of the last unflushed batch (whose artifacts the next run simply redoes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from catalogs import layout
from catalogs.catalog import Catalog, artifact_table
from catalogs.planner import PlannedStage, plan, task_rows
from catalogs.stage import Stage
from catalogs.store import Store
from pipeline.progress import ProgressCounter, StageProgress
from pipeline.runner import StageRunner
from pipeline.spec import PipelineSpec, plan_stages

log = logging.getLogger("trellis_data.build")


@dataclass
class BuildReport:
    run_id: str
    planned: dict[str, int]
    ok: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    swept_temporaries: int = 0

    @property
    def did_work(self) -> bool:
        return any(self.planned.values())


def versions() -> dict[str, str]:
    import duckdb
    import ray

    out = {"python": platform.python_version(), "ray": ray.__version__, "duckdb": duckdb.__version__, "pyarrow": pa.__version__}
    for mod in ("torch", "open3d", "trimesh", "bpy", "transformers"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", None) or getattr(getattr(m, "app", None), "version_string", "?")
        except Exception:
            continue
    return out


def import_sources(catalog: Catalog, sources: Iterable[Mapping[str, Any]], batch: int = 50_000) -> int:
    """Upsert every source's listing into `assets` (driver side)."""
    from curation.sources import get_source

    n = 0
    for spec in sources:
        src = get_source(spec["name"], **dict(spec.get("options") or {}))
        buf: list[dict[str, Any]] = []
        for rec in src.list_assets():
            try:
                layout.check_sha(rec.sha256)  # ids name files in the store: sha256 hex only
            except ValueError:
                log.warning("source %s lists an asset whose id is not a sha256 hex digest (%r); skipped",
                            spec["name"], str(rec.sha256)[:80])
                continue
            buf.append(_utf8_row(rec.as_row()))
            if len(buf) >= batch:
                n += catalog.upsert_assets(buf)
                buf = []
        n += catalog.upsert_assets(buf)
    return n


def _utf8_row(row: dict[str, Any]) -> dict[str, Any]:
    """A listing row the catalog can store: strings that are not valid UTF-8 (a non-UTF-8 file name
    decoded with surrogateescape) are escaped, so one odd name fails only its own asset."""
    for k, v in row.items():
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                row[k] = v.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                log.warning("asset %s: %s is not valid UTF-8; stored escaped as %r", row.get("sha256", "?")[:12], k, row[k])
    return row


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING,
                 _node_ip_address=os.environ.get("TRELLIS_RAY_NODE_IP", "127.0.0.2"))


def _cluster() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())


def _actor_args(stage: Stage, cluster: Mapping[str, float], cpu_scale: float) -> dict[str, Any]:
    """Ray resource arguments for a stage's actors, fitted to what the cluster has."""
    args = stage.resources.ray_args()
    args["num_cpus"] = round(args.get("num_cpus", 1.0) * cpu_scale, 4)
    if args.get("num_gpus") and not cluster.get("GPU"):
        log.info("stage %s asks for a GPU and the cluster has none: running it on CPU", stage.name)
        args.pop("num_gpus")
    custom = {k: v for k, v in (args.pop("resources", None) or {}).items() if cluster.get(k)}
    dropped = set(stage.resources.custom) - set(custom)
    if dropped:
        log.info("stage %s: cluster has no %s resource; placing it anywhere", stage.name, sorted(dropped))
    if custom:
        args["resources"] = custom
    return args


def _blocks(table: pa.Table, cpus: float) -> list[pa.Table]:
    """Split the task table into blocks: small enough to balance actors, big enough to amortise."""
    n = table.num_rows
    rows = max(1, min(256, math.ceil(n / max(1.0, 8 * cpus))))
    return [table.slice(i, rows) for i in range(0, n, rows)]


class RecordSink:
    """Driver-side batching of records into the catalog and the store's Parquet record log."""

    def __init__(self, catalog: Catalog, store: Store, run_id: str, flush_every: int, flush_s: float) -> None:
        self.catalog, self.store, self.run_id = catalog, store, run_id
        self.flush_every, self.flush_s = flush_every, flush_s
        self.buffer: list[dict[str, Any]] = []
        self.last = time.monotonic()
        self.parts = 0

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        self.buffer.extend(records)
        if len(self.buffer) >= self.flush_every or time.monotonic() - self.last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if not self.buffer:
            return
        table = artifact_table(self.buffer)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.store.write_bytes(f"{layout.CATALOG_DIR}/records/run={self.run_id}/part-{self.parts:06d}.parquet",
                               sink.getvalue().to_pybytes())
        self.parts += 1
        self.catalog.upsert_artifacts(table)
        self.buffer = []


def build(spec: PipelineSpec, store_url: str, catalog_path: str, *, address: str | None = None,
          num_cpus: int | None = None, selection: str | None = None, retry_failed: bool = False,
          storage_options: Mapping[str, Any] | None = None, progress: bool = True) -> BuildReport:
    started = time.monotonic()
    storage_options = dict(storage_options or {})
    store = Store(store_url, **storage_options)
    catalog = Catalog(catalog_path)
    with catalog.writing():  # the driver is the single writer for the whole build
        run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        if catalog.mark_interrupted_runs():
            log.info("a previous build was interrupted; resuming from the catalog and the store")
        swept = store.sweep_temporaries()
        if swept:
            log.info("removed %d temporary files left by an interrupted run", swept)
        n_assets = import_sources(catalog, spec.sources)
        stages = spec.build_stages()
        planned = plan_stages(stages)
        register_models(catalog, stages)
        todo = plan(catalog, planned, selection or spec.selection, retry_failed=retry_failed)
        counts = {p.name: int(((todo.column("todo").to_numpy() >> i) & 1).sum()) if todo.num_rows else 0
                  for i, p in enumerate(planned)}
        report = BuildReport(run_id, counts, swept_temporaries=swept)
        log.info("%d assets listed; plan: %s", n_assets, ", ".join(f"{k}={v}" for k, v in counts.items()))
        if not todo.num_rows:
            report.seconds = time.monotonic() - started
            return report
        catalog.start_run(run_id, spec.to_dict(), counts, platform.node(), versions())
        status = "failed"
        try:
            init_ray(address, num_cpus or spec.execution.get("num_cpus"))
            _stream(spec, stages, planned, todo, catalog, store, run_id, report, storage_options, progress)
            status = "finished"
        finally:
            report.seconds = time.monotonic() - started
            catalog.finish_run(run_id, status, {"planned": report.planned, "ok": report.ok, "failed": report.failed,
                                                "seconds": report.seconds})
        return report


def register_models(catalog: Catalog, stages: Iterable[Stage]) -> None:
    """Record every model a stage runs (variant, weights hash, config, pretrained or not)."""
    for s in stages:
        m = s.model_info()
        if m:
            catalog.register_model(s.name, s.variant, m["weights_sha256"], m.get("config", {}), m.get("source", ""),
                                   bool(m.get("pretrained")), m.get("note"))


def _stream(spec: PipelineSpec, stages: list[Stage], planned: list[PlannedStage], todo: pa.Table, catalog: Catalog,
            store: Store, run_id: str, report: BuildReport, storage_options: Mapping[str, Any], progress: bool) -> None:
    import ray.data
    from ray.data import ActorPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(spec.execution.get("ray_progress", False))
    ctx.execution_options.preserve_order = False
    ctx.execution_options.verbose_progress = False

    cluster = _cluster()
    cpus = cluster.get("CPU", 1.0)
    active = [(i, s) for i, s in enumerate(stages) if report.planned[s.name]]
    total_cpu = sum(s.resources.num_cpus for _, s in active)
    cpu_scale = min(1.0, cpus / total_cpu) if total_cpu else 1.0

    tasks = task_rows(catalog, planned, todo)
    tasks = tasks.append_column("records", pa.array(["[]"] * tasks.num_rows)).append_column(
        "failed", pa.array([0] * tasks.num_rows, pa.int64()))
    ds = ray.data.from_arrow(_blocks(tasks, cpus))
    index = {s.name: i for i, s in enumerate(stages)}
    counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
    for i, stage in active:
        args = _actor_args(stage, cluster, cpu_scale)
        max_actors = max(1, int(spec.execution.get("max_actors", {}).get(stage.name, 0) or cpus // max(args["num_cpus"], 1e-3)))
        entry = next(e for e in spec.stages if e.name == stage.name)
        ds = ds.map_batches(
            StageRunner,
            fn_constructor_kwargs={
                "entry": {"name": entry.name, "use": entry.use, "params": entry.params,
                          "config": {**entry.config, **stage.pins()}, "upstream": entry.upstream},
                "bit": 1 << i, "upstream_bits": sum(1 << index[u] for u in stage.upstream if u in index),
                "fingerprint": planned[i].fingerprint, "store_url": store.url, "storage_options": dict(storage_options),
                "run_id": run_id, "progress": counter,
            },
            batch_size=stage.batch_size if stage.batch_size > 1 else None,
            batch_format="pyarrow",
            zero_copy_batch=False,
            compute=ActorPoolStrategy(min_size=1, max_size=min(max_actors, max(1, report.planned[stage.name]))),
            **args,
        )
    sink = RecordSink(catalog, store, run_id, int(spec.execution.get("flush_every", 500)),
                      float(spec.execution.get("flush_s", 5.0)))
    bars = StageProgress([(s.name, report.planned[s.name]) for _, s in active], counter, enabled=progress)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for raw in batch.column("records").to_pylist():
                records = json.loads(raw)
                for r in records:
                    key = "ok" if r["status"] == "ok" else "failed"
                    getattr(report, key)[r["stage"]] = getattr(report, key).get(r["stage"], 0) + 1
                    if key == "failed":
                        log.warning("asset %s stage %s failed: %s: %s", r["sha256"][:12], r["stage"], r["error_type"], r["error"])
                sink.add(records)
    finally:
        sink.flush()
        bars.close()
