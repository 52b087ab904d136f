"""`trellis-data plan`: cost and ETA of a build, predicted from a real build of a random sample.

1. Import the spec's sources, resolve the selection (N assets) and draw a seeded random sample
   (a fraction, at least one asset, or an absolute count).
2. Build the sample for real, into the real store and catalog (the work is kept).
3. Measure per stage, from the sample's current artifacts: assets measured, failure rate, mean
   seconds per asset (`artifacts.seconds`: one attempt's wall time inside the worker, cold starts
   included), mean bytes per successful asset, and the stage's declared resources (CPUs, GPUs per
   worker) — hence throughput per resource: assets/s per CPU core = 1 / (seconds x CPUs), likewise
   per GPU.
4. Predict for the full selection (every asset, from scratch) and for what a build would still do
   (the planner's remaining counts), on a cluster shape (`cpus=512,gpus=32`; default: the cluster
   the sample ran on).

The wall-time model (streaming: every stage runs at once and shares the cluster):

    resource-seconds  W_cpu = sum_s n_s * t_s * cpus_s      W_gpu = sum_s n_s * t_s * gpus_s
    steady            T = max(W_cpu / C, W_gpu / G, max_s n_s * t_s / workers_s)
    fill              F = sum_s rows_per_block * t_s   (the first block's trip through every stage)
    overhead          O = the sample run's measured span minus the same model applied to the sample
                          (actor start-up, scheduling, driver upserts), added once
    wall              = O + F + T

`workers_s` = min(n_s, C / cpus_s) (or G / gpus_s for a GPU stage), the most workers a stage can
run. The bottleneck is the term that decides T: a shared pool (then named by the stage with the
largest share of it) or one stage's own parallelism limit. A GPU stage measured without a GPU
(the sample ran on CPU) keeps its CPU time on the GPU, which over-states its GPU-hours; the table
says so. CPU-hours and GPU-hours are reserved resource-hours (n * t * declared resources), disk is
n * ok-rate * bytes per asset. The span of a run is measured from its artifacts: from the start of
its first task (updated_at - seconds) to the end of its last, so Ray start-up and source listing
are not in it.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from catalogs.catalog import Catalog, utcnow
from catalogs.planner import plan, selection_sql
from catalogs.stage import Stage
from pipeline.spec import PipelineSpec, plan_stages


# -- inputs ---------------------------------------------------------------------------------------
def parse_sample(text: str | float | None) -> float:
    """'1%' -> 0.01, '0.05' -> 0.05, 5 -> 0.05 (numbers above 1 are percentages)."""
    if text is None:
        return 0.01
    s = str(text).strip()
    if s.endswith("%"):
        frac = float(s[:-1]) / 100.0
    else:
        frac = float(s)
        if frac > 1:
            frac /= 100.0
    if not 0 < frac <= 1:
        raise ValueError(f"sample must be in (0, 100%], got {text!r}")
    return frac


def parse_cluster(text: str | Mapping[str, Any] | None) -> dict[str, float] | None:
    """'cpus=512,gpus=32' -> {'cpus': 512.0, 'gpus': 32.0}."""
    if text is None or text == "":
        return None
    if isinstance(text, Mapping):
        items = dict(text)
    else:
        items = {}
        for part in re.split(r"[,\s]+", str(text).strip()):
            if not part:
                continue
            k, _, v = part.partition("=")
            if not _:
                raise ValueError(f"cluster shape wants key=value pairs, got {part!r}")
            items[k.strip().lower()] = v
    out = {"cpus": float(items.pop("cpus", items.pop("cpu", 0)) or 0), "gpus": float(items.pop("gpus", items.pop("gpu", 0)) or 0)}
    if items:
        raise ValueError(f"unknown cluster keys {sorted(items)} (known: cpus, gpus)")
    if out["cpus"] <= 0:
        raise ValueError("a cluster needs cpus > 0")
    return out


def sample_shas(shas: Sequence[str], fraction: float, assets: int | None, seed: int) -> list[str]:
    """A seeded random sample: `assets` of them if given, else ceil(fraction * N), at least one."""
    pool = sorted(shas)
    if not pool:
        return []
    k = assets if assets is not None else math.ceil(fraction * len(pool))
    k = max(1, min(len(pool), int(k)))
    return sorted(random.Random(seed).sample(pool, k))


def values_selection(shas: Sequence[str]) -> str:
    """SQL selecting exactly these assets (sha256 hex only, so quoting is safe)."""
    for s in shas:
        if not re.fullmatch(r"[0-9a-f]{64}", s):
            raise ValueError(f"not a sha256: {s!r}")
    return "SELECT sha256 FROM (VALUES " + ", ".join(f"('{s}')" for s in shas) + ") AS t(sha256)"


# -- measurements ---------------------------------------------------------------------------------
@dataclass
class StageMeasure:
    stage: str
    variant: str
    measured: int              # artifacts (ok + failed) of the sample at the planned fingerprint
    ok: int
    failed: int
    seconds_mean: float        # per asset, one attempt, inside the worker
    seconds_p50: float
    seconds_p90: float
    bytes_per_ok: float        # mean bytes of a successful artifact
    cpus: float                # declared per worker
    gpus: float
    gpu_measured_on_cpu: bool = False

    @property
    def ok_rate(self) -> float:
        return self.ok / self.measured if self.measured else 1.0

    def per_core(self) -> float | None:
        """Assets/s per CPU core (declared CPUs)."""
        on_cpu = not self.gpus or self.gpu_measured_on_cpu
        return 1.0 / (self.seconds_mean * self.cpus) if self.seconds_mean > 0 and self.cpus > 0 and on_cpu else None

    def per_gpu(self) -> float | None:
        return 1.0 / (self.seconds_mean * self.gpus) if self.seconds_mean > 0 and self.gpus > 0 else None


def measure(catalog: Catalog, spec: PipelineSpec, stages: Sequence[Stage], shas: Sequence[str],
            cluster_had_gpu: bool) -> list[StageMeasure]:
    """Per-stage measurements from the sample's artifacts at the planned fingerprints (whichever run made them)."""
    planned = {p.name: p for p in plan_stages(list(stages))}
    out = []
    with catalog.connect() as con:
        con.execute("CREATE TEMP TABLE _sample(sha256 VARCHAR)")
        con.executemany("INSERT INTO _sample VALUES (?)", [[s] for s in shas])
        for s in stages:
            p = planned[s.name]
            row = con.execute(
                """SELECT count(*), count(*) FILTER (status = 'ok'), count(*) FILTER (status = 'failed'),
                          coalesce(avg(seconds), 0), coalesce(quantile_cont(seconds, 0.5), 0),
                          coalesce(quantile_cont(seconds, 0.9), 0),
                          coalesce(avg(bytes) FILTER (status = 'ok'), 0)
                   FROM artifacts WHERE stage = ? AND variant = ? AND fingerprint = ?
                        AND sha256 IN (SELECT sha256 FROM _sample)""",
                [s.name, s.variant, p.fingerprint]).fetchone()
            gpus = float(s.resources.num_gpus or 0)
            out.append(StageMeasure(s.name, s.variant, int(row[0]), int(row[1]), int(row[2]), float(row[3]),
                                    float(row[4]), float(row[5]), float(row[6]), float(s.resources.num_cpus), gpus,
                                    gpu_measured_on_cpu=bool(gpus and not cluster_had_gpu)))
    return out


def run_span(catalog: Catalog, run_id: str) -> dict[str, Any] | None:
    """A run's processing span from its artifacts: first task start to last task end (seconds)."""
    row = catalog.scalar(
        """SELECT json_object('start', min(updated_at - to_microseconds(CAST(seconds * 1e6 AS BIGINT)))::VARCHAR,
                              'end', max(updated_at)::VARCHAR,
                              'span_s', date_diff('microsecond', min(updated_at - to_microseconds(CAST(seconds * 1e6 AS BIGINT))),
                                                  max(updated_at)) / 1e6,
                              'records', count(*))
           FROM artifacts WHERE run_id = ? AND seconds IS NOT NULL""", [run_id])
    d = json.loads(row) if row else None
    return d if d and d.get("records") else None


# -- the model ------------------------------------------------------------------------------------
def rows_per_block(n: int, cpus: float) -> int:
    """Same rule as the executor's `_blocks`."""
    return max(1, min(256, math.ceil(n / max(1.0, 8 * cpus))))


def model_wall(measures: Sequence[StageMeasure], counts: Mapping[str, int], cpus: float, gpus: float,
               total_assets: int) -> dict[str, Any]:
    """Streaming wall-time model (see the module docstring), without the fixed overhead."""
    w_cpu = w_gpu = 0.0
    fill = 0.0
    block = rows_per_block(total_assets, cpus)
    per_stage: dict[str, dict[str, float]] = {}
    limits: list[tuple[float, str]] = []
    for m in measures:
        n = int(counts.get(m.stage, 0))
        if n <= 0:
            per_stage[m.stage] = {"n": 0, "cpu_s": 0.0, "gpu_s": 0.0, "workers": 0, "own_limit_s": 0.0}
            continue
        on_gpu = m.gpus > 0 and gpus > 0
        cpu_s = n * m.seconds_mean * m.cpus
        gpu_s = n * m.seconds_mean * m.gpus if on_gpu else 0.0
        if on_gpu:
            workers = max(1.0, min(n, math.floor(gpus / m.gpus)))
        else:
            workers = max(1.0, min(n, math.floor(cpus / max(m.cpus, 1e-3))))
        own = math.ceil(n / workers) * m.seconds_mean
        w_cpu += cpu_s
        w_gpu += gpu_s
        fill += min(block, n) * m.seconds_mean
        per_stage[m.stage] = {"n": n, "cpu_s": cpu_s, "gpu_s": gpu_s, "workers": workers, "own_limit_s": own}
        limits.append((own, f"stage {m.stage} (parallelism: {int(workers)} workers)"))
    terms = [(w_cpu / cpus, "CPU pool"), *([(w_gpu / gpus, "GPU pool")] if gpus > 0 else []), *limits]
    steady, what = max(terms, key=lambda t: t[0]) if terms else (0.0, "nothing to do")
    bottleneck_stage = None
    if what in ("CPU pool", "GPU pool"):
        key = "cpu_s" if what == "CPU pool" else "gpu_s"
        bottleneck_stage = max(per_stage, key=lambda s: per_stage[s][key]) if per_stage else None
    elif what.startswith("stage "):
        bottleneck_stage = what.split()[1]
    return {"steady_s": steady, "fill_s": fill, "cpu_core_s": w_cpu, "gpu_s": w_gpu, "bound_by": what,
            "bottleneck_stage": bottleneck_stage, "block_rows": block, "per_stage": per_stage}


@dataclass
class Estimate:
    estimate_id: str
    spec_name: str
    selection: str | None
    cluster: dict[str, float]
    sample: dict[str, Any]
    stages: list[StageMeasure]
    full: dict[str, Any]
    remaining: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def per_stage_json(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.stages:
            d = asdict(m)
            d.update(ok_rate=m.ok_rate, assets_per_s_per_core=m.per_core(), assets_per_s_per_gpu=m.per_gpu(),
                     full_n=self.full["per_stage"][m.stage]["n"],
                     remaining_n=self.remaining["per_stage"][m.stage]["n"],
                     full_disk_bytes=self.full["per_stage"][m.stage]["disk_bytes"],
                     full_cpu_h=self.full["per_stage"][m.stage]["cpu_s"] / 3600,
                     full_gpu_h=self.full["per_stage"][m.stage]["gpu_s"] / 3600)
            rows.append(d)
        return rows

    def totals_json(self) -> dict[str, Any]:
        return {"sample": self.sample, "full": _strip(self.full), "remaining": _strip(self.remaining), "notes": self.notes}


def _strip(pred: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in pred.items() if k != "per_stage"}


def predict(measures: Sequence[StageMeasure], counts: Mapping[str, int], total_assets: int, cluster: Mapping[str, float],
            overhead_s: float) -> dict[str, Any]:
    cpus, gpus = float(cluster["cpus"]), float(cluster.get("gpus", 0))
    w = model_wall(measures, counts, cpus, gpus, total_assets)
    any_work = any(int(counts.get(m.stage, 0)) for m in measures)
    wall = (overhead_s if any_work else 0.0) + w["fill_s"] + w["steady_s"]
    disk = 0.0
    for m in measures:
        d = int(counts.get(m.stage, 0)) * m.ok_rate * m.bytes_per_ok
        w["per_stage"][m.stage]["disk_bytes"] = d
        disk += d
    return {"assets": total_assets, "wall_s": wall, "overhead_s": overhead_s if any_work else 0.0,
            "fill_s": w["fill_s"], "steady_s": w["steady_s"], "bound_by": w["bound_by"],
            "bottleneck_stage": w["bottleneck_stage"], "cpu_hours": w["cpu_core_s"] / 3600,
            "gpu_hours": w["gpu_s"] / 3600, "disk_bytes": disk, "block_rows": w["block_rows"],
            "per_stage": w["per_stage"]}


def estimate(spec: PipelineSpec, store_url: str, catalog_path: str, *, sample: str | float | None = "1%",
             assets: int | None = None, seed: int = 0, cluster: str | Mapping[str, Any] | None = None,
             selection: str | None = None, address: str | None = None, num_cpus: int | None = None,
             progress: bool = False, storage_options: Mapping[str, Any] | None = None) -> Estimate:
    """Build a random sample for real, measure it, predict the full selection; stored in `estimates`."""
    import ray

    from pipeline.executor import build, import_sources

    fraction = parse_sample(sample)
    shape = parse_cluster(cluster)
    catalog = Catalog(catalog_path)
    import_sources(catalog, spec.sources)
    sel = selection or spec.selection
    shas = [r["sha256"] for r in catalog.query(f"SELECT DISTINCT sha256 FROM ({selection_sql(sel)})").to_pylist()]
    chosen = sample_shas(shas, fraction, assets, seed)
    if not chosen:
        raise ValueError("the selection is empty: nothing to sample")
    report = build(spec, store_url, catalog_path, address=address, num_cpus=num_cpus, selection=values_selection(chosen),
                   progress=progress, storage_options=storage_options)
    ran_cluster = dict(ray.cluster_resources()) if ray.is_initialized() else {}
    sample_cpus = float(ran_cluster.get("CPU") or num_cpus or spec.execution.get("num_cpus") or os.cpu_count() or 1)
    sample_gpus = float(ran_cluster.get("GPU") or 0)
    stages = spec.build_stages()
    measures = measure(catalog, spec, stages, chosen, cluster_had_gpu=sample_gpus > 0)
    notes: list[str] = []
    for m in measures:
        if m.measured == 0:
            notes.append(f"stage {m.stage}: nothing measured (every sampled asset was blocked upstream); predicted as free")
        if m.gpu_measured_on_cpu:
            notes.append(f"stage {m.stage}: declares {m.gpus:g} GPU but the sample ran on CPU; its GPU time is "
                         f"the CPU time (an over-estimate)")

    # Fixed overhead: the sample run's span less the model's own prediction for the sample.
    overhead = 0.0
    span = run_span(catalog, report.run_id) if report.did_work else None
    if span:
        mod = predict(measures, report.planned, len(chosen), {"cpus": sample_cpus, "gpus": sample_gpus}, 0.0)
        overhead = max(0.0, float(span["span_s"]) - mod["wall_s"])
    else:
        notes.append("the sample was already built: no run to measure the fixed overhead from (taken as 0)")

    shape = shape or {"cpus": sample_cpus, "gpus": sample_gpus}
    full_counts = {m.stage: len(shas) for m in measures}
    todo = plan(catalog, plan_stages(stages), sel)
    bits = todo.column("todo").to_numpy() if todo.num_rows else None
    remaining_counts = {m.stage: (int(((bits >> i) & 1).sum()) if bits is not None else 0) for i, m in enumerate(measures)}
    est = Estimate(
        estimate_id=time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6], spec_name=spec.name, selection=sel,
        cluster=shape,
        sample={"assets": len(chosen), "of": len(shas), "fraction": fraction, "seed": seed,
                "run_id": report.run_id if report.did_work else None, "span": span, "overhead_s": overhead,
                "ran_on": {"cpus": sample_cpus, "gpus": sample_gpus}, "planned": report.planned,
                "ok": report.ok, "failed": report.failed, "build_seconds": report.seconds},
        stages=measures,
        full=predict(measures, full_counts, len(shas), shape, overhead),
        remaining=predict(measures, remaining_counts, len(todo) if todo.num_rows else 0, shape, overhead),
        notes=notes,
    )
    store_estimate(catalog, spec, est)
    return est


def store_estimate(catalog: Catalog, spec: PipelineSpec, est: Estimate) -> None:
    with catalog.connect() as con:
        con.execute("INSERT INTO estimates (estimate_id, created_at, spec, selection, cluster, per_stage, totals) "
                    "VALUES (?,?,?,?,?,?,?)",
                    [est.estimate_id, utcnow(), json.dumps(spec.to_dict()), est.selection, json.dumps(est.cluster),
                     json.dumps(est.per_stage_json()), json.dumps(est.totals_json())])


def load_estimates(catalog: Catalog) -> list[dict[str, Any]]:
    rows = catalog.query("SELECT * FROM estimates ORDER BY created_at").to_pylist()
    for r in rows:
        for k in ("spec", "cluster", "per_stage", "totals"):
            if isinstance(r.get(k), str):
                r[k] = json.loads(r[k])
    return rows


def compare_with_runs(catalog: Catalog, est: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Finished runs after an estimate, each with its measured span and the estimate's prediction
    of what was left to do (`remaining`), per stage and in total."""
    runs = catalog.query("SELECT run_id, started_at, finished_at, status, counts FROM runs WHERE started_at > ? "
                         "AND status = 'finished' ORDER BY started_at", [est["created_at"]]).to_pylist()
    per_stage = {s["stage"]: s for s in est["per_stage"]}
    out = []
    for r in runs:
        span = run_span(catalog, r["run_id"])
        if not span:
            continue
        actual = catalog.query(
            "SELECT stage, count(*) AS n, avg(seconds) AS seconds_mean, CAST(sum(bytes) FILTER (status = 'ok') AS DOUBLE) AS bytes "
            "FROM artifacts WHERE run_id = ? GROUP BY stage", [r["run_id"]]).to_pylist()
        stages = []
        for a in actual:
            p = per_stage.get(a["stage"], {})
            stages.append({"stage": a["stage"], "n": a["n"], "predicted_seconds": p.get("seconds_mean"),
                           "actual_seconds": a["seconds_mean"],
                           "predicted_bytes": (p.get("bytes_per_ok") or 0) * (p.get("ok_rate") or 0) * a["n"],
                           "actual_bytes": a["bytes"] or 0})
        rem = est["totals"]["remaining"]
        out.append({"run_id": r["run_id"], "started_at": r["started_at"], "span_s": span["span_s"],
                    "predicted_wall_s": rem["wall_s"], "predicted_assets": rem["assets"],
                    "ratio": (span["span_s"] / rem["wall_s"]) if rem["wall_s"] else None, "stages": stages})
    return out


# -- presentation ---------------------------------------------------------------------------------
def human_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def human_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    b = float(b)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(b) < 1000 or unit == "TB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1000.0
    return f"{b:.1f} PB"


def stage_rows(est: Estimate) -> list[dict[str, str]]:
    rows = []
    for m in est.stages:
        f = est.full["per_stage"][m.stage]
        per_core, per_gpu = m.per_core(), m.per_gpu()
        rows.append({
            "stage": m.stage, "measured": str(m.measured), "fail%": f"{100 * (1 - m.ok_rate):.0f}",
            "s/asset": f"{m.seconds_mean:.3f}", "p90 s": f"{m.seconds_p90:.3f}",
            "resources": f"{m.cpus:g} CPU" + (f" + {m.gpus:g} GPU" + (" (measured on CPU)" if m.gpu_measured_on_cpu else "")
                                               if m.gpus else ""),
            "assets/s/core": f"{per_core:.2f}" if per_core else "-", "assets/s/GPU": f"{per_gpu:.2f}" if per_gpu else "-",
            "bytes/asset": human_bytes(m.bytes_per_ok), "full n": str(f["n"]),
            "CPU-h": f"{f['cpu_s'] / 3600:.3g}", "GPU-h": f"{f['gpu_s'] / 3600:.3g}", "disk": human_bytes(f["disk_bytes"]),
        })
    return rows


def summary_lines(est: Estimate) -> list[str]:
    s, c = est.sample, est.cluster
    lines = [f"estimate {est.estimate_id}: sample of {s['assets']} / {s['of']} assets (seed {s['seed']}), "
             f"sample run {s['run_id'] or '(already built)'}"
             + (f", span {s['span']['span_s']:.1f} s" if s.get("span") else "")
             + f", fixed overhead {s['overhead_s']:.1f} s",
             f"cluster: {c['cpus']:g} CPUs, {c.get('gpus', 0):g} GPUs"]
    for label, p in (("full selection", est.full), ("remaining work", est.remaining)):
        lines.append(
            f"{label}: {p['assets']} assets -> wall {human_s(p['wall_s'])} (steady {human_s(p['steady_s'])} bound by "
            f"{p['bound_by']}" + (f", bottleneck stage {p['bottleneck_stage']}" if p["bottleneck_stage"] else "")
            + f"; fill {human_s(p['fill_s'])}; overhead {human_s(p['overhead_s'])}), "
            f"CPU {p['cpu_hours']:.3g} h, GPU {p['gpu_hours']:.3g} h, disk {human_bytes(p['disk_bytes'])}")
    lines += [f"note: {n}" for n in est.notes]
    return lines
