"""Listings into the catalog, named subsets (TRELLIS-500K) and coverage reports.

- `import_listing(catalog, source)` upserts a source's listing into `assets`. An id already listed
  by another source keeps its first source; the second listing is recorded as an
  `asset_relations` row (sha, sha, 'also_listed_in:<source>') instead of being lost — exact
  duplicates across sources, nothing deleted.
- `import_trellis500k(catalog, sources)` imports the TRELLIS-500K listings as the subset
  `TRELLIS-500K` (training sources) and `TRELLIS-500K-eval` (Toys4k), selecting by the per-source
  aesthetic thresholds of DATA_FORMATS §2.1 on the published score; the rule is stored with the
  subset.
- `coverage(catalog, subset)` -> one row per source: listed, obtained (ingest ok), missing
  (listed - obtained), failed (ingest failed), pending (never attempted), failures by error_type.
  `format_coverage(rows)` prints it (the CLI verb `trellis-data coverage --subset NAME`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa

from curation.listing import TRELLIS_500K_RULE
from curation.sources import get_source
from curation.sources.base import AssetRecord

TRAIN_SUBSET = "TRELLIS-500K"
EVAL_SUBSET = "TRELLIS-500K-eval"


def import_records(catalog, records: Iterable[AssetRecord], batch: int = 50_000) -> dict[str, int]:
    """Upsert records; ids already held by another source are related, not overwritten."""
    counts = {"listed": 0, "new_or_updated": 0, "cross_source_duplicates": 0}
    buf: list[AssetRecord] = []

    def flush() -> None:
        if not buf:
            return
        shas = pa.table({"sha256": [r.sha256 for r in buf]})
        with catalog.connect() as con:
            con.register("incoming_ids", shas)
            owner = dict(con.execute("SELECT a.sha256, a.source FROM assets a JOIN incoming_ids i USING (sha256)").fetchall())
        keep, rel = [], []
        for r in buf:
            o = owner.get(r.sha256)
            if o is not None and o != r.source:
                rel.append((r.sha256, r.sha256, f"also_listed_in:{r.source}", None))
            else:
                keep.append(r.as_row())
        catalog.upsert_assets(keep)
        if rel:
            from curation.quality import _write_relations

            _write_relations(catalog, rel)
        counts["new_or_updated"] += len(keep)
        counts["cross_source_duplicates"] += len(rel)
        buf.clear()

    for r in records:
        counts["listed"] += 1
        buf.append(r)
        if len(buf) >= batch:
            flush()
    flush()
    return counts


def import_listing(catalog, source: str, **options: Any) -> dict[str, int]:
    return import_records(catalog, get_source(source, **options).list_assets())


def define_subset(catalog, name: str, rule: Mapping[str, Any] | str, members: Iterable[tuple[str, str]],
                  description: str = "", replace: bool = True) -> int:
    """Create (or replace) subset `name` with (sha256, source) members."""
    rows = list(dict.fromkeys(members))
    rule_s = rule if isinstance(rule, str) else json.dumps(rule, sort_keys=True)
    t = pa.table({"subset": [name] * len(rows), "sha256": [r[0] for r in rows], "source": [r[1] for r in rows]})
    with catalog.connect() as con:
        con.execute("BEGIN")
        if replace:
            con.execute("DELETE FROM subset_members WHERE subset = ?", [name])
        con.execute("INSERT INTO subsets (name, rule, description) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE "
                    "SET rule = excluded.rule, description = excluded.description", [name, rule_s, description])
        con.register("incoming_members", t)
        con.execute("INSERT OR IGNORE INTO subset_members SELECT subset, sha256, source FROM incoming_members")
        con.execute("COMMIT")
    return len(rows)


def import_trellis500k(catalog, sources: Mapping[str, Mapping[str, Any]] | None = None,
                       include: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """Import the TRELLIS-500K listings and define the `TRELLIS-500K` / `TRELLIS-500K-eval` subsets.

    `sources` maps source name -> options (listing location etc.); `include` limits the sources."""
    sources = dict(sources or {})
    names = list(include) if include is not None else list(TRELLIS_500K_RULE)
    report: dict[str, dict[str, int]] = {}
    members: dict[str, list[tuple[str, str]]] = {TRAIN_SUBSET: [], EVAL_SUBSET: []}
    rule: dict[str, dict[str, Any]] = {TRAIN_SUBSET: {}, EVAL_SUBSET: {}}
    for name in names:
        spec = TRELLIS_500K_RULE[name]
        opts = dict(sources.get(name) or {})
        recs = list(get_source(name, **opts).list_assets())
        counts = import_records(catalog, recs)
        thr = spec["min_aesthetic"]
        chosen = [(r.sha256, name) for r in recs if r.aesthetic_score is not None and r.aesthetic_score >= thr]
        subset = TRAIN_SUBSET if spec["split"] == "train" else EVAL_SUBSET
        members[subset].extend(chosen)
        src = get_source(name, **opts)
        rule[subset][name] = {"min_aesthetic": thr, "on": "published aesthetic_score",
                              "listing": getattr(src, "listing_location", None),
                              "expected_assets": spec["assets"], "expected_with_captions": spec["with_captions"]}
        report[name] = {**counts, "selected": len(chosen)}
    for subset, mem in members.items():
        if rule[subset]:
            define_subset(catalog, subset, {"rule": "per-source aesthetic_score >= threshold (DATA_FORMATS §2.1)",
                                            "sources": rule[subset]}, mem,
                          description="TRELLIS-500K training set" if subset == TRAIN_SUBSET else "TRELLIS-500K Toys4k evaluation set")
    return report


def coverage(catalog, subset: str) -> list[dict[str, Any]]:
    """Per source of `subset`: listed, obtained, missing, failed, pending, failed_by_reason."""
    if catalog.scalar("SELECT count(*) FROM subsets WHERE name = ?", [subset]) == 0:
        raise KeyError(f"no subset named {subset!r}")
    rows = catalog.query("""
        SELECT coalesce(m.source, a.source, '?') AS source,
               count(*) AS listed,
               count(*) FILTER (WHERE x.status = 'ok') AS obtained,
               count(*) FILTER (WHERE x.status IS NOT NULL AND x.status <> 'ok') AS failed,
               count(*) FILTER (WHERE x.status IS NULL) AS pending
        FROM subset_members m
        LEFT JOIN assets a USING (sha256)
        LEFT JOIN (SELECT sha256, status FROM artifacts WHERE stage = 'ingest') x USING (sha256)
        WHERE m.subset = ?
        GROUP BY 1 ORDER BY 1
    """, [subset]).to_pylist()
    reasons = catalog.query("""
        SELECT coalesce(m.source, '?') AS source, coalesce(x.error_type, 'unknown') AS reason, count(*) AS n
        FROM subset_members m
        JOIN artifacts x ON x.sha256 = m.sha256 AND x.stage = 'ingest' AND x.status <> 'ok'
        WHERE m.subset = ?
        GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2
    """, [subset]).to_pylist()
    by: dict[str, dict[str, int]] = {}
    for r in reasons:
        by.setdefault(r["source"], {})[r["reason"]] = int(r["n"])
    out = []
    for r in rows:
        listed, obtained = int(r["listed"]), int(r["obtained"])
        out.append({"source": r["source"], "listed": listed, "obtained": obtained, "missing": listed - obtained,
                    "failed": int(r["failed"]), "pending": int(r["pending"]),
                    "failed_by_reason": by.get(r["source"], {})})
    return out


def format_coverage(rows: list[Mapping[str, Any]], subset: str | None = None) -> str:
    """A plain-text table of `coverage` rows with a total line."""
    head = ("source", "listed", "obtained", "missing", "failed", "pending", "%", "failed by reason")
    total = {k: sum(int(r[k]) for r in rows) for k in ("listed", "obtained", "missing", "failed", "pending")}
    tot_reasons: dict[str, int] = {}
    for r in rows:
        for k, v in r["failed_by_reason"].items():
            tot_reasons[k] = tot_reasons.get(k, 0) + v

    def line(name: str, r: Mapping[str, Any], reasons: Mapping[str, int]) -> tuple[str, ...]:
        pct = f"{100.0 * r['obtained'] / r['listed']:.1f}" if r["listed"] else "-"
        why = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"
        return (name, str(r["listed"]), str(r["obtained"]), str(r["missing"]), str(r["failed"]), str(r["pending"]), pct, why)

    table = [head] + [line(r["source"], r, r["failed_by_reason"]) for r in rows] + [line("TOTAL", total, tot_reasons)]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i in (0, len(head) - 1) else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    lines = [f"coverage of subset {subset}" if subset else "coverage", fmt(table[0]),
             "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in table[1:-1]]
    lines += ["  ".join("-" * w for w in widths), fmt(table[-1])]
    return "\n".join(lines)


__all__ = ["import_records", "import_listing", "define_subset", "import_trellis500k", "coverage", "format_coverage",
           "TRAIN_SUBSET", "EVAL_SUBSET"]
