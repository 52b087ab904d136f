"""The HTML report: sections from whatever the catalog holds, rendered in headless Chromium.

Chromium checks are real: the page carries a tiny self-check script that, on `load`, records how
many <img> elements failed to decode and every error event (JS errors and failed resource loads,
caught in the capture phase); `--dump-dom` returns the DOM after load, and `--enable-logging=stderr`
shows every console message (our page logs none, so any is an error). Every <img src> is also
checked on disk. A deliberately broken page proves the checks catch what they claim to.
"""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from catalogs.catalog import Catalog, utcnow
from pipeline.report import write_report
from tests.report.conftest import chromium

needs_chromium = pytest.mark.skipif(chromium() is None, reason="Debian's `chromium` package is not installed "
                                    "(apt-get install -y chromium, or run .ci/sysdeps.sh as root)")
REPO = Path(__file__).resolve().parents[2]


class _Imgs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        for k in ("src", "href"):
            v = a.get(k) or ""
            if re.match(r"^(https?:)?//", v):
                self.external.append(v)


def page_images(index: Path) -> _Imgs:
    p = _Imgs()
    p.feed(index.read_text())
    return p


def run_chromium(index: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", *extra, index.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def load_check(index: Path) -> dict:
    """The self-check element's attributes after load, and the page's console messages."""
    res = run_chromium(index, "--dump-dom")
    m = re.search(r'<p id="selfcheck"([^>]*)>', res.stdout)
    assert m, f"no self-check element in the dumped DOM; stderr: {res.stderr[-2000:]}"
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', m.group(1)))
    console = [ln for ln in res.stderr.splitlines() if ":CONSOLE" in ln]
    return {"attrs": attrs, "console": console}


def screenshot(index: Path, png: Path) -> Path:
    res = run_chromium(index, f"--screenshot={png}", "--window-size=1280,2000")
    assert png.exists() and png.stat().st_size > 10_000, res.stderr[-2000:]
    return png


def decorate(root: Path) -> None:
    """Give a built root what other stages would add: renders, aesthetic scores, quality, failures."""
    cat = Catalog(root / "catalog.duckdb")
    shas = [r["sha256"] for r in cat.query("SELECT sha256 FROM assets ORDER BY sha256").to_pylist()]
    now = utcnow()
    recs = []
    for i, sha in enumerate(shas[:12]):
        d = root / "renders" / sha
        d.mkdir(parents=True)
        img = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
        img.paste((40 + 17 * i, 120, 200 - 12 * i, 255), (64, 64, 192, 192))
        img.save(d / "000.png")
        recs.append({"sha256": sha, "stage": "render", "variant": "", "fingerprint": "f", "status": "ok",
                     "uri": str(d), "bytes": (d / "000.png").stat().st_size, "attempts": 1, "run_id": "synthetic",
                     "seconds": 2.0 + i, "updated_at": now, "metrics": {"n_views": 1, "n_faces": 100 * (i + 1)}})
        recs.append({"sha256": sha, "stage": "aesthetic", "variant": "tiny", "fingerprint": "f", "status": "ok",
                     "uri": None, "bytes": 0, "attempts": 1, "run_id": "synthetic", "seconds": 0.1, "updated_at": now,
                     "metrics": {"score": 3.0 + 0.25 * i}})
    # one render listed in the catalog whose file is gone: no thumbnail, never a broken <img>
    recs.append({"sha256": shas[12], "stage": "render", "variant": "", "fingerprint": "f", "status": "ok", "uri": "x",
                 "bytes": 1, "attempts": 1, "run_id": "synthetic", "seconds": 1.0, "updated_at": now, "metrics": {}})
    for sha, etype, err in ((shas[13], "corrupt_file", "not a glTF <file>"), (shas[14], "timeout", "no result after 600 s"),
                            (shas[15], "corrupt_file", "bad header")):
        recs.append({"sha256": sha, "stage": "render", "variant": "", "fingerprint": "f", "status": "failed",
                     "error_type": etype, "error": err, "attempts": 2, "retryable": etype == "timeout",
                     "run_id": "synthetic", "seconds": 3.0, "updated_at": now})
    cat.upsert_artifacts(recs)


def test_report_of_the_thin_slice(planned_copy, tmp_path):
    index = write_report(str(planned_copy), str(planned_copy / "catalog.duckdb"), tmp_path / "rep")
    html = index.read_text()
    for section in ("Assets per source and stage", "Runs", "Failures", "Histograms", "Estimate vs actual"):
        assert section in html
    assert "hist_num_voxels.png" in html and "hist_faces.png" in html and "stage_seconds.png" in html
    assert "hist_aesthetic.png" not in html and "hist_render_time.png" not in html  # no such data: no figure
    assert "No render artifacts yet" in html and "No failed artifacts" in html
    assert "Runs after the estimate" in html  # the remaining build is compared with the estimate
    imgs = page_images(index)
    assert not imgs.external
    assert all((index.parent / s).is_file() for s in imgs.srcs)


def test_report_with_renders_scores_and_failures(planned_copy, tmp_path):
    decorate(planned_copy)
    index = write_report(str(planned_copy), str(planned_copy / "catalog.duckdb"), tmp_path / "rep", thumbs=6)
    html = index.read_text()
    for fig in ("hist_num_voxels.png", "hist_aesthetic.png", "hist_faces.png", "hist_render_time.png"):
        assert fig in html
    assert "Best aesthetic scores" in html and "Worst aesthetic scores" in html
    assert "corrupt_file" in html and "not a glTF &lt;file&gt;" in html and "timeout" in html
    thumbs = sorted((index.parent / "thumbs").iterdir())
    assert thumbs and all(Image.open(t).size[0] <= 128 and Image.open(t).size[1] <= 128 for t in thumbs)
    imgs = page_images(index)
    assert all((index.parent / s).is_file() for s in imgs.srcs)
    # best sheet starts with the highest score (i = 11 -> 5.75)
    best = html.index("Best aesthetic scores")
    assert html.index("5.75", best) < html.index("Worst aesthetic scores")


@needs_chromium
def test_report_renders_in_headless_chromium(demo_runs, planned_copy, tmp_path):
    decorate(planned_copy)
    index = write_report(str(planned_copy), str(planned_copy / "catalog.duckdb"), tmp_path / "rep", thumbs=8)
    n_imgs = len(page_images(index).srcs)
    check = load_check(index)
    attrs = check["attrs"]
    assert attrs.get("data-loaded") == "1", attrs
    assert int(attrs["data-images"]) == n_imgs > 10
    assert attrs["data-broken"] == "0", attrs.get("data-broken-list")
    assert attrs["data-errors"] == "0", attrs.get("data-error-list")
    assert not check["console"], check["console"]
    png = screenshot(index, tmp_path / "report.png")
    with Image.open(png) as im:
        assert im.size == (1280, 2000)
        import numpy as np

        assert len(np.unique(np.asarray(im.convert("L").resize((64, 100))))) > 20  # not a blank page


@needs_chromium
def test_the_checks_catch_a_broken_page(tmp_path):
    from pipeline.report import SELF_CHECK

    bad = tmp_path / "bad.html"
    bad.write_text(f"<!doctype html><html><head>{SELF_CHECK}</head><body><img src='missing.png'>"
                   "<script>console.error('boom'); notAFunction();</script>"
                   "<p id=\"selfcheck\" data-loaded=\"0\"></p></body></html>")
    check = load_check(bad)
    assert check["attrs"]["data-broken"] == "1" and "missing.png" in check["attrs"]["data-broken-list"]
    assert int(check["attrs"]["data-errors"]) == 2  # the failed image and the uncaught error
    assert any("boom" in c for c in check["console"])


def test_cli_report(planned_copy):
    from click.testing import CliRunner

    from pipeline.cli import main

    res = CliRunner().invoke(main, ["report", "--root", str(planned_copy)])
    assert res.exit_code == 0, res.output
    assert (planned_copy / "report" / "index.html").is_file()
    assert json.dumps(res.output)
