"""The planner: which (asset, stage) pairs must run, from fingerprints stored in the catalog.

A pair must run when its artifact is missing, stale (stored fingerprint differs from the planned
one) or failed-and-retryable (retryable error and attempts below the stage's cap). A stage that
must run forces its downstream stages to run too; a permanent failure blocks its downstream stages,
so a re-run of a finished build plans nothing.

The per-asset answer is a bitmask over the planned stages (bit i = stage i), which keeps a plan of
ten million assets a single Arrow column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalogs.catalog import Catalog


@dataclass(frozen=True)
class PlannedStage:
    name: str
    variant: str
    fingerprint: str
    max_attempts: int
    upstream: tuple[str, ...] = ()


def _planned_values(stages: Sequence[PlannedStage]) -> str:
    def q(s: str) -> str:
        return "'" + s.replace("'", "''") + "'"

    return ", ".join(f"({q(s.name)}, {q(s.variant)}, {q(s.fingerprint)}, {s.max_attempts}, {1 << i})" for i, s in enumerate(stages))


def _selects_all(selection: str | None) -> bool:
    return selection is None or selection.strip().lower() == "all"


def selection_sql(selection: str | None) -> str:
    """The asset selection as SQL yielding a `sha256` column; None or 'all' means every asset."""
    return "SELECT sha256 FROM assets" if _selects_all(selection) else selection


def _masks_sql(stages: Sequence[PlannedStage], selection: str | None, retry_failed: bool) -> str:
    failed_done = "NOT coalesce(a.retryable, false)" if not retry_failed else "false"
    # With every asset selected the final LEFT JOIN from `sel` already drops orphan artifacts, so
    # the semi-join would only cost time (about a third of the query at 1M assets), and `assets`
    # is keyed by sha256, so no DISTINCT either.
    in_sel = "" if _selects_all(selection) else "WHERE a.sha256 IN (SELECT sha256 FROM sel)"
    return f"""
        WITH planned(stage, variant, fp, cap, bit) AS (VALUES {_planned_values(stages)}),
        sel AS ({"SELECT sha256 FROM assets" if _selects_all(selection) else f"SELECT DISTINCT sha256 FROM ({selection})"}),
        state AS (
            SELECT a.sha256,
                   bit_or(CASE WHEN a.status = 'ok' AND a.fingerprint = p.fp THEN p.bit ELSE 0 END) AS ok_mask,
                   bit_or(CASE WHEN a.status = 'failed' AND a.fingerprint = p.fp
                                    AND ({failed_done} OR a.attempts >= p.cap) THEN p.bit ELSE 0 END) AS fail_mask,
                   bit_or(CASE WHEN a.fingerprint IS DISTINCT FROM p.fp AND a.status = 'ok' THEN p.bit ELSE 0 END) AS stale_mask,
                   bit_or(CASE WHEN a.status = 'failed' THEN p.bit ELSE 0 END) AS any_fail_mask
            FROM artifacts a JOIN planned p ON a.stage = p.stage AND a.variant = p.variant
            {in_sel}
            GROUP BY a.sha256
        )
        SELECT sel.sha256, coalesce(ok_mask, 0)::BIGINT AS ok_mask, coalesce(fail_mask, 0)::BIGINT AS fail_mask,
               coalesce(stale_mask, 0)::BIGINT AS stale_mask, coalesce(any_fail_mask, 0)::BIGINT AS any_fail_mask
        FROM sel LEFT JOIN state USING (sha256)
    """


def _close(stages: Sequence[PlannedStage], ok: np.ndarray, fail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(todo, blocked) masks after propagating along the stage graph (stages are topologically ordered)."""
    index = {s.name: i for i, s in enumerate(stages)}
    todo = ~(ok | fail) & ((1 << len(stages)) - 1)
    blocked = np.zeros_like(ok)
    for i, s in enumerate(stages):
        bit = np.int64(1 << i)
        up = [index[u] for u in s.upstream if u in index]
        if not up:
            continue
        up_mask = np.int64(sum(1 << j for j in up))
        upstream_bad = ((fail | blocked) & up_mask) != 0
        blocked |= np.where(upstream_bad & ((ok & bit) == 0), bit, 0).astype(np.int64)
        todo |= np.where((todo & up_mask) != 0, bit, 0).astype(np.int64)
    todo &= ~blocked
    return todo, blocked


def plan(catalog: Catalog, stages: Sequence[PlannedStage], selection: str | None = None,
         retry_failed: bool = False) -> pa.Table:
    """Assets with work to do: columns `sha256` and `todo` (bitmask over `stages`)."""
    with catalog.connect() as con:
        t = con.sql(_masks_sql(stages, selection, retry_failed)).to_arrow_table()
    ok = t.column("ok_mask").to_numpy()
    fail = t.column("fail_mask").to_numpy()
    todo, _ = _close(stages, ok, fail)
    keep = todo != 0
    return pa.table({"sha256": pc.filter(t.column("sha256"), pa.array(keep)), "todo": todo[keep]})


def status(catalog: Catalog, stages: Sequence[PlannedStage], selection: str | None = None) -> list[dict]:
    """Per stage/variant counts: current, stale, failed, blocked (by a failed upstream), missing."""
    with catalog.connect() as con:
        t = con.sql(_masks_sql(stages, selection, retry_failed=False)).to_arrow_table()
    ok, fail = t.column("ok_mask").to_numpy(), t.column("fail_mask").to_numpy()
    stale, any_fail = t.column("stale_mask").to_numpy(), t.column("any_fail_mask").to_numpy()
    _, blocked = _close(stages, ok, fail)
    rows = []
    for i, s in enumerate(stages):
        bit = 1 << i
        is_ok, is_stale = (ok & bit) != 0, (stale & bit) != 0
        is_failed = ((any_fail & bit) != 0) & ~is_ok
        is_blocked = ((blocked & bit) != 0) & ~is_ok & ~is_failed
        rows.append({
            "stage": s.name, "variant": s.variant, "current": int(is_ok.sum()), "stale": int((is_stale & ~is_ok).sum()),
            "failed": int(is_failed.sum()), "blocked": int(is_blocked.sum()),
            "missing": int((~is_ok & ~is_stale & ~is_failed & ~is_blocked).sum()),
        })
    return rows


def task_rows(catalog: Catalog, stages: Sequence[PlannedStage], planned: pa.Table) -> pa.Table:
    """Join a plan with asset rows and the current upstream artifacts (JSON), for the executor."""
    with catalog.connect() as con:
        con.register("plan_in", planned)
        return con.sql(f"""
            WITH planned(stage, variant, fp, cap, bit) AS (VALUES {_planned_values(stages)}),
            inputs AS (
                SELECT a.sha256, json_group_object(a.stage, json_object('uri', a.uri, 'metrics', a.metrics)) AS inputs
                FROM artifacts a JOIN planned p ON a.stage = p.stage AND a.variant = p.variant AND a.fingerprint = p.fp
                WHERE a.status = 'ok' AND a.sha256 IN (SELECT sha256 FROM plan_in)
                GROUP BY a.sha256
            ),
            attempts AS (
                SELECT a.sha256, json_group_object(a.stage, a.attempts) AS attempts
                FROM artifacts a JOIN planned p ON a.stage = p.stage AND a.variant = p.variant AND a.fingerprint = p.fp
                WHERE a.status = 'failed' AND a.sha256 IN (SELECT sha256 FROM plan_in)
                GROUP BY a.sha256
            )
            SELECT p.sha256, p.todo, to_json(a)::VARCHAR AS asset, coalesce(i.inputs::VARCHAR, '{{}}') AS inputs,
                   coalesce(t.attempts::VARCHAR, '{{}}') AS attempts
            FROM plan_in p JOIN assets a USING (sha256)
            LEFT JOIN inputs i USING (sha256) LEFT JOIN attempts t USING (sha256)
        """).to_arrow_table()


def stage_order(stages: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Topological order of a {stage: upstream} graph (stable by insertion order)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"stage graph has a cycle: {' -> '.join(path + (name,))}")
        if name in seen:
            return
        for u in stages.get(name, ()):
            if u in stages:
                visit(u, path + (name,))
        seen.add(name)
        order.append(name)

    for n in stages:
        visit(n, ())
    return order
