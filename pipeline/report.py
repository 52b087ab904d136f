"""`trellis-data report`: a static HTML report of a dataset (one folder, opens from disk, no server).

Everything is read from the catalog (read-only) and the store: counts per source and stage, runs,
failure reasons with examples, histograms drawn with matplotlib (num_voxels, aesthetic score,
faces, render time, seconds per stage — each only when the data exists), contact sheets of
128-px render thumbnails (a seeded random sample, the best and the worst aesthetic scores) and the
latest `plan` estimate against the runs that followed it. Every image is a file in the folder;
the page has no scripts beyond a tiny self-check (it marks broken images and errors on the page,
which the tests read) and nothing is fetched from the network.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from catalogs.catalog import Catalog, utcnow
from catalogs.layout import check_sha
from catalogs.store import Store
from pipeline.estimate import compare_with_runs, human_bytes, human_s, load_estimates, run_span

THUMB_PX = 128


def esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _json(v: Any) -> dict[str, Any]:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return {}
    if isinstance(v, str):
        try:
            out = json.loads(v)
        except ValueError:
            return {}
        return out if isinstance(out, dict) else {}
    return dict(v)


def table_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, cls: str = "") -> str:
    if not rows:
        return '<p class="empty">(none)</p>'
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{esc(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# -- data -----------------------------------------------------------------------------------------
KNOWN_ORDER = ["ingest", "quality", "normalize", "voxelize", "render", "render_cond", "aesthetic", "features",
               "ss_latent", "slat"]
MAX_POINTS = 200_000
"""Histograms draw at most this many values (a seeded reservoir sample), whatever the catalog's size."""


class ReportData:
    """Aggregates computed in DuckDB, so a catalog of millions of artifacts never lands in pandas whole."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.runs = catalog.query("SELECT run_id, started_at, finished_at, status, counts FROM runs ORDER BY started_at").to_pandas()

    def q(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        return self.catalog.query(sql, params).to_pandas()

    def stages(self) -> list[str]:
        found = self.q("SELECT DISTINCT stage FROM artifacts")["stage"].tolist()
        return sorted(found, key=lambda s: (KNOWN_ORDER.index(s) if s in KNOWN_ORDER else len(KNOWN_ORDER), s))

    def totals(self) -> dict[str, Any]:
        r = self.q("""SELECT (SELECT count(*) FROM assets) AS assets, (SELECT count(DISTINCT source) FROM assets) AS sources,
                             count(*) FILTER (status = 'ok') AS ok, count(*) FILTER (status = 'failed') AS failed,
                             coalesce(CAST(sum(bytes) FILTER (status = 'ok') AS DOUBLE), 0) AS bytes FROM artifacts""")
        return r.iloc[0].to_dict()

    def metric(self, stage: str, key: str, limit: int = MAX_POINTS) -> pd.Series:
        """A numeric metric of a stage's successful artifacts, indexed by sha256 (sampled above `limit`)."""
        df = self.q(f"""SELECT sha256, TRY_CAST(json_extract_string(metrics, '$.' || ?) AS DOUBLE) AS v
                        FROM artifacts WHERE stage = ? AND status = 'ok' AND v IS NOT NULL
                        USING SAMPLE reservoir({int(limit)} ROWS) REPEATABLE (0)""", [key, stage])
        return pd.Series(df["v"].to_numpy(), index=df["sha256"].tolist(), dtype=float)

    def seconds(self, stage: str, ok_only: bool = False, limit: int = MAX_POINTS) -> pd.Series:
        cond = " AND status = 'ok'" if ok_only else ""
        df = self.q(f"""SELECT seconds FROM artifacts WHERE stage = ? AND seconds IS NOT NULL{cond}
                        USING SAMPLE reservoir({int(limit)} ROWS) REPEATABLE (0)""", [stage])
        return df["seconds"]


# -- sections -------------------------------------------------------------------------------------
def _cell(ok: int, failed: int) -> str:
    return f"{ok}" + (f" ({failed} failed)" if failed else "")


def counts_section(d: ReportData) -> str:
    stages = d.stages()
    per_source = d.q("SELECT source, count(*) AS n FROM assets GROUP BY source ORDER BY source")
    grid = d.q("""SELECT coalesce(a.source, '(unknown)') AS source, x.stage,
                         count(*) FILTER (x.status = 'ok') AS ok, count(*) FILTER (x.status = 'failed') AS failed
                  FROM artifacts x LEFT JOIN assets a USING (sha256) GROUP BY ALL""")
    cells = {(r.source, r.stage): (int(r.ok), int(r.failed)) for r in grid.itertuples()}
    rows = []
    for r in per_source.itertuples():
        rows.append({"source": r.source, "assets": int(r.n), **{st: _cell(*cells.get((r.source, st), (0, 0))) for st in stages}})
    if len(rows) > 1:
        rows.append({"source": "all", "assets": int(per_source["n"].sum()),
                     **{st: _cell(sum(v[0] for (s, t), v in cells.items() if t == st),
                                  sum(v[1] for (s, t), v in cells.items() if t == st)) for st in stages}})
    ps = d.q("""SELECT stage, count(*) FILTER (status = 'ok') AS ok, count(*) FILTER (status = 'failed') AS failed,
                       coalesce(CAST(sum(bytes) FILTER (status = 'ok') AS DOUBLE), 0) AS bytes, avg(seconds) AS s
                FROM artifacts GROUP BY stage""").set_index("stage")
    per_stage = [{"stage": st, "ok": int(ps.at[st, "ok"]), "failed": int(ps.at[st, "failed"]),
                  "bytes": human_bytes(ps.at[st, "bytes"]),
                  "mean s/asset": f"{ps.at[st, 's']:.3f}" if pd.notna(ps.at[st, "s"]) else "-"} for st in stages]
    return ("<h2 id='counts'>Assets per source and stage</h2><p>Successful artifacts (failures in brackets).</p>"
            + table_html(rows, ["source", "assets", *stages]) + "<h3>Per stage</h3>" + table_html(per_stage))


def runs_section(d: ReportData) -> str:
    rows = []
    for r in d.runs.itertuples():
        counts = _json(r.counts)
        span = run_span(d.catalog, r.run_id)
        dur = (r.finished_at - r.started_at).total_seconds() if pd.notna(r.finished_at) else None
        rows.append({"run": r.run_id, "started (UTC)": str(r.started_at)[:19], "status": r.status,
                     "duration": human_s(dur), "processing span": human_s(span["span_s"]) if span else "-",
                     "planned": ", ".join(f"{k} {v}" for k, v in (counts.get("planned") or {}).items() if v),
                     "failed": ", ".join(f"{k} {v}" for k, v in (counts.get("failed") or {}).items()) or "0"})
    return ("<h2 id='runs'>Runs</h2><p>Duration is the whole build (sources, Ray start-up); the processing span runs "
            "from the first task's start to the last task's end.</p>" + table_html(rows))


def failures_section(d: ReportData, examples: int = 3) -> str:
    groups = d.q("""SELECT stage, coalesce(error_type, '(none)') AS error_type, count(*) AS n FROM artifacts
                    WHERE status = 'failed' GROUP BY ALL ORDER BY n DESC, stage, error_type""")
    if groups.empty:
        return "<h2 id='failures'>Failures</h2><p class='good'>No failed artifacts.</p>"
    ex = d.q(f"""SELECT * FROM (
                     SELECT x.stage, coalesce(x.error_type, '(none)') AS error_type, x.sha256, a.file_identifier,
                            x.attempts, x.error,
                            row_number() OVER (PARTITION BY x.stage, coalesce(x.error_type, '(none)') ORDER BY x.sha256) AS k
                     FROM artifacts x LEFT JOIN assets a USING (sha256) WHERE x.status = 'failed')
                 WHERE k <= {int(examples)}""")
    rows = []
    for g in groups.itertuples():
        sub = ex[(ex["stage"] == g.stage) & (ex["error_type"] == g.error_type)]
        items = "".join(
            f"<li><code>{esc(r.sha256[:12])}</code> {esc(r.file_identifier)} "
            f"(attempts {esc(r.attempts)}): <span class='err'>{esc((r.error or '')[:300])}</span></li>"
            for r in sub.itertuples())
        rows.append(f"<tr><td>{esc(g.stage)}</td><td>{esc(g.error_type)}</td><td>{int(g.n)}</td><td><ul>{items}</ul></td></tr>")
    return ("<h2 id='failures'>Failures</h2>"
            f"<p>{int(groups['n'].sum())} failed (asset, stage) pairs, by stage and error type, with examples.</p>"
            "<table><thead><tr><th>stage</th><th>error type</th><th>count</th><th>examples</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _hist(values: Iterable[float], title: str, xlabel: str, path: Path, log: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    v = np.asarray(list(values), dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    if log and (v > 0).all() and v.max() / max(v.min(), 1e-12) > 50:
        bins = np.logspace(np.log10(v.min()), np.log10(v.max()), 30)
        ax.set_xscale("log")
    else:
        bins = min(30, max(5, len(np.unique(v))))
    ax.hist(v, bins=bins, color="#4c72b0", edgecolor="white")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("assets", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _stage_seconds(d: ReportData, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = [(s, d.seconds(s, limit=20_000)) for s in d.stages()]
    per = [(s, v) for s, v in per if len(v)]
    if not per:
        return False
    stages = [s for s, _ in per]
    data = [v.clip(lower=1e-4).to_numpy() for _, v in per]
    fig, ax = plt.subplots(figsize=(5, 0.45 * len(stages) + 1.4), dpi=100)
    ax.boxplot(data, orientation="horizontal", tick_labels=stages, showfliers=True)
    ax.set_xscale("log")
    ax.set_xlabel("seconds per asset (one attempt, log scale)", fontsize=9)
    ax.set_title("Time per asset by stage", fontsize=10)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def histograms_section(d: ReportData, out: Path) -> str:
    figs: list[tuple[str, str]] = []
    nv = d.metric("voxelize", "num_voxels")
    if len(nv):
        _hist(nv, f"Occupied voxels ({len(nv)} assets)", "num_voxels", out / "hist_num_voxels.png", log=True)
        figs.append(("hist_num_voxels.png", "num_voxels (voxelize)"))
    score = d.metric("aesthetic", "score")
    if len(score):
        _hist(score, f"Aesthetic score ({len(score)} assets)", "score (aesthetic stage)", out / "hist_aesthetic.png")
        figs.append(("hist_aesthetic.png", "aesthetic score (aesthetic stage)"))
    else:
        pub = d.q(f"SELECT aesthetic_score FROM assets WHERE aesthetic_score IS NOT NULL "
                  f"USING SAMPLE reservoir({MAX_POINTS} ROWS) REPEATABLE (0)")["aesthetic_score"]
        if len(pub):
            _hist(pub, f"Published aesthetic score ({len(pub)} assets)", "score published by the source",
                  out / "hist_aesthetic.png")
            figs.append(("hist_aesthetic.png", "aesthetic score (published by the source)"))
    for stage, key in (("quality", "faces"), ("render", "n_faces"), ("normalize", "num_faces")):
        faces = d.metric(stage, key)
        if len(faces):
            _hist(faces, f"Faces ({len(faces)} assets)", f"{key} ({stage})", out / "hist_faces.png", log=True)
            figs.append(("hist_faces.png", f"faces ({stage} metrics)"))
            break
    rt = d.seconds("render", ok_only=True)
    if len(rt):
        _hist(rt, f"Render time ({len(rt)} assets)", "seconds per asset (render)", out / "hist_render_time.png")
        figs.append(("hist_render_time.png", "render time"))
    if _stage_seconds(d, out / "stage_seconds.png"):
        figs.append(("stage_seconds.png", "seconds per asset, every stage"))
    if not figs:
        return "<h2 id='histograms'>Histograms</h2><p class='empty'>No measurements yet.</p>"
    cells = "".join(f"<figure><img src='{esc(f)}' alt='{esc(c)}' width='500'><figcaption>{esc(c)}</figcaption></figure>"
                    for f, c in figs)
    return f"<h2 id='histograms'>Histograms</h2><div class='figs'>{cells}</div>"


def _thumbnail(store: Store, sha: str, out: Path) -> str | None:
    """renders/<sha>/000.png -> thumbs/<sha>.jpg (128 px, composited on white); None if unreadable."""
    from PIL import Image

    rel = f"renders/{check_sha(sha)}/000.png"
    dest = out / "thumbs" / f"{sha}.jpg"
    if dest.exists():
        return f"thumbs/{sha}.jpg"
    try:
        with store.open(rel, "rb") as fh:
            img = Image.open(fh)
            img.load()
    except Exception:  # missing or broken render: no thumbnail, never a broken <img>
        return None
    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    bg.alpha_composite(img)
    rgb = bg.convert("RGB")
    rgb.thumbnail((THUMB_PX, THUMB_PX), Image.LANCZOS)
    dest.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(dest, "JPEG", quality=85)
    return f"thumbs/{sha}.jpg"


def _sheet(store: Store, out: Path, shas: Sequence[str], captions: Mapping[str, str], title: str) -> str:
    cells = []
    for sha in shas:
        src = _thumbnail(store, sha, out)
        if src:
            cap = captions.get(sha, "")
            cells.append(f"<figure class='thumb'><img src='{esc(src)}' width='{THUMB_PX}' height='{THUMB_PX}' "
                         f"alt='{esc(sha[:12])}'><figcaption><code>{esc(sha[:10])}</code><br>{esc(cap)}</figcaption></figure>")
    if not cells:
        return f"<h3>{esc(title)}</h3><p class='empty'>No readable renders.</p>"
    return f"<h3>{esc(title)}</h3><div class='sheet'>{''.join(cells)}</div>"


def contact_sheets_section(d: ReportData, store: Store, out: Path, n: int, seed: int) -> str:
    head = "<h2 id='renders'>Renders</h2>"
    n_rendered = int(d.q("SELECT count(*) AS n FROM artifacts WHERE stage = 'render' AND status = 'ok'")["n"].iloc[0])
    if not n_rendered:
        return head + "<p class='empty'>No render artifacts yet (stage <code>render</code>).</p>"
    # seeded random sample, ranked in SQL (md5 of seed + sha256), then best/worst by the aesthetic stage's score
    pick = d.q("SELECT sha256 FROM artifacts WHERE stage = 'render' AND status = 'ok' ORDER BY md5(? || sha256) LIMIT ?",
               [str(seed), int(n)])["sha256"].tolist()
    k = max(1, n // 2)
    scored = d.q("""SELECT s.sha256, TRY_CAST(json_extract_string(s.metrics, '$.score') AS DOUBLE) AS score
                    FROM artifacts s JOIN artifacts r ON r.sha256 = s.sha256 AND r.stage = 'render' AND r.status = 'ok'
                    WHERE s.stage = 'aesthetic' AND s.status = 'ok' AND score IS NOT NULL""")
    best = scored.sort_values(["score", "sha256"], ascending=[False, True]).head(k)
    worst = scored.sort_values(["score", "sha256"]).head(k)
    shown = sorted(set(pick) | set(best["sha256"]) | set(worst["sha256"]))
    src = d.q("SELECT sha256, source FROM assets WHERE sha256 IN (SELECT unnest(?::VARCHAR[]))", [shown])
    src = dict(zip(src["sha256"], src["source"]))
    score = dict(zip(scored["sha256"], scored["score"]))
    caps = {s: f"{src.get(s, '')}" + (f" · {score[s]:.2f}" if s in score else "") for s in shown}
    parts = [head, f"<p>{n_rendered} rendered assets; thumbnails of view 000 at {THUMB_PX} px.</p>"]
    parts.append(_sheet(store, out, sorted(pick), caps, f"Random sample ({len(pick)}, seed {seed})"))
    if len(scored):
        parts.append(_sheet(store, out, best["sha256"].tolist(), caps, f"Best aesthetic scores (top {len(best)})"))
        parts.append(_sheet(store, out, worst["sha256"].tolist(), caps, f"Worst aesthetic scores (bottom {len(worst)})"))
    else:
        parts.append("<p class='empty'>No aesthetic scores yet (stage <code>aesthetic</code>): best/worst sheets "
                     "appear once it has run.</p>")
    return "".join(parts)


def estimate_section(d: ReportData) -> str:
    head = "<h2 id='estimate'>Estimate vs actual</h2>"
    ests = load_estimates(d.catalog)
    if not ests:
        return head + "<p class='empty'>No estimate yet: run <code>trellis-data plan --spec … --sample 1%</code>.</p>"
    e = ests[-1]
    t = e["totals"]
    s = t["sample"]
    parts = [head, f"<p>Estimate <code>{esc(e['estimate_id'])}</code> of {esc(str(e['created_at'])[:19])} UTC, from a "
             f"sample of {s['assets']} of {s['of']} assets (seed {s['seed']}), for a cluster of "
             f"{e['cluster']['cpus']:g} CPUs and {e['cluster'].get('gpus', 0):g} GPUs. Model: wall = fixed overhead "
             f"(measured on the sample run) + pipeline fill + max(CPU-seconds / CPUs, GPU-seconds / GPUs, each stage's "
             f"own parallelism limit).</p>"]
    rows = []
    for p in e["per_stage"]:
        rows.append({"stage": p["stage"], "measured": p["measured"], "fail %": f"{100 * (1 - p['ok_rate']):.0f}",
                     "s/asset": f"{p['seconds_mean']:.3f}",
                     "assets/s per core": f"{p['assets_per_s_per_core']:.2f}" if p.get("assets_per_s_per_core") else "-",
                     "assets/s per GPU": f"{p['assets_per_s_per_gpu']:.2f}" if p.get("assets_per_s_per_gpu") else "-",
                     "bytes/asset": human_bytes(p["bytes_per_ok"]), "CPU-h (full)": f"{p['full_cpu_h']:.3g}",
                     "GPU-h (full)": f"{p['full_gpu_h']:.3g}", "disk (full)": human_bytes(p["full_disk_bytes"])})
    parts.append(table_html(rows))
    tot = []
    for label in ("full", "remaining"):
        p = t[label]
        tot.append({"prediction": "full selection" if label == "full" else "remaining work", "assets": p["assets"],
                    "wall": human_s(p["wall_s"]), "bound by": p["bound_by"], "bottleneck": p.get("bottleneck_stage") or "-",
                    "CPU-h": f"{p['cpu_hours']:.3g}", "GPU-h": f"{p['gpu_hours']:.3g}", "disk": human_bytes(p["disk_bytes"])})
    parts.append("<h3>Totals</h3>" + table_html(tot))
    if t.get("notes"):
        parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in t["notes"]) + "</ul>")
    comp = compare_with_runs(d.catalog, e)
    if not comp:
        parts.append("<p class='empty'>No finished run since this estimate to compare with.</p>")
    else:
        rows = [{"run": c["run_id"], "predicted wall": human_s(c["predicted_wall_s"]),
                 "measured span": human_s(c["span_s"]), "measured / predicted": f"{c['ratio']:.2f}" if c["ratio"] else "-"}
                for c in comp]
        parts.append("<h3>Runs after the estimate</h3>" + table_html(rows))
        srows = [{"run": c["run_id"], "stage": s["stage"], "assets": s["n"],
                  "predicted s/asset": f"{s['predicted_seconds']:.3f}" if s["predicted_seconds"] is not None else "-",
                  "actual s/asset": f"{s['actual_seconds']:.3f}" if s["actual_seconds"] is not None else "-",
                  "predicted disk": human_bytes(s["predicted_bytes"]), "actual disk": human_bytes(s["actual_bytes"])}
                 for c in comp for s in c["stages"]]
        parts.append(table_html(srows))
    return "".join(parts)


# -- page -----------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
h3{font-size:15px;margin:16px 0 6px} table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top} th{background:#f4f6f8}
code{font-size:12px} .empty{color:#888} .good{color:#2a7d2a} .err{color:#a33}
.figs{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0} figcaption{font-size:12px;color:#555}
.sheet{display:flex;flex-wrap:wrap;gap:8px} .thumb{width:128px} .thumb img{border:1px solid #ddd;background:#fff}
nav a{margin-right:12px} .meta{color:#666;font-size:12px} ul{margin:0;padding-left:18px}
"""

# Marks what loaded and what did not, on an element the tests read (headless Chromium's --dump-dom).
SELF_CHECK = """<script>
(function(){var errs=[];
window.addEventListener('error',function(e){var t=e.target;errs.push(t&&t.tagName?('failed to load '+(t.currentSrc||t.src||t.href)):String(e.message));},true);
window.addEventListener('load',function(){var bad=[],imgs=document.images;
for(var i=0;i<imgs.length;i++){if(!imgs[i].complete||imgs[i].naturalWidth===0){bad.push(imgs[i].getAttribute('src'));}}
var s=document.getElementById('selfcheck');s.setAttribute('data-images',imgs.length);s.setAttribute('data-broken',bad.length);
s.setAttribute('data-broken-list',bad.join(' '));s.setAttribute('data-errors',errs.length);s.setAttribute('data-error-list',errs.join(' | '));
s.setAttribute('data-loaded','1');});})();
</script>"""


def write_report(store_url: str, catalog_path: str, out_dir: str | Path, *, thumbs: int = 24, seed: int = 0,
                 storage_options: Mapping[str, Any] | None = None) -> Path:
    """Write `<out_dir>/index.html` plus its PNG/JPEG files; returns the index path."""
    out = Path(out_dir)
    if out.exists():  # regenerate from scratch: no stale figure or thumbnail survives
        for sub in ("thumbs",):
            shutil.rmtree(out / sub, ignore_errors=True)
        for f in out.glob("*.png"):
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(catalog_path, read_only=True)
    store = Store(store_url, **dict(storage_options or {}))
    d = ReportData(catalog)
    tot = d.totals()
    n_ok, n_failed, total_bytes = int(tot["ok"]), int(tot["failed"]), float(tot["bytes"])
    sections = [counts_section(d), runs_section(d), failures_section(d), histograms_section(d, out),
                contact_sheets_section(d, store, out, thumbs, seed), estimate_section(d)]
    nav = "".join(f"<a href='#{a}'>{t}</a>" for a, t in (("counts", "Counts"), ("runs", "Runs"), ("failures", "Failures"),
                                                       ("histograms", "Histograms"), ("renders", "Renders"),
                                                       ("estimate", "Estimate")))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>trellis-data report: {esc(store_url)}</title>
{SELF_CHECK}
<style>{CSS}</style></head>
<body>
<h1>Dataset report</h1>
<p class="meta">store <code>{esc(store_url)}</code> · catalog <code>{esc(catalog_path)}</code> · generated {esc(str(utcnow())[:19])} UTC</p>
<p><b>{int(tot['assets'])}</b> assets from <b>{int(tot['sources'])}</b> source(s);
<b>{n_ok}</b> artifacts ok, <b>{n_failed}</b> failed; {esc(human_bytes(total_bytes))} in the store; {len(d.runs)} run(s).</p>
<nav>{nav}</nav>
{''.join(sections)}
<p id="selfcheck" class="meta" data-loaded="0"></p>
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
