"""Objaverse-XL sources against a loopback server in the real HF / GitHub layouts."""

from __future__ import annotations

import json
import threading
import zipfile

import pytest

from catalogs.stage import BadInput
from curation.errors import CorruptArchive, DownloadTimeout, HttpError, MemberNotFound, NotFound
from curation.http import RateLimiter
from curation.package import is_package, open_asset, read_manifest
from curation.sources import get_source
from curation.sources.base import ChecksumMismatch

from curation_fixtures import glb, listing_csv, object_paths_gz, row, run_source, sha, zip_bytes

HF = "/datasets/allenai/objaverse/resolve/main"
LIST = "/datasets/JeffreyXiang/TRELLIS-500K/resolve/main"


@pytest.fixture
def sketchfab(server, tmp_path):
    files = {"uid0a": glb("box"), "uid1b": glb("chair"), "uid2c": glb("torus"), "uid3d": glb("star")}
    paths = {u: f"glbs/000-{i:03d}/{u}.glb" for i, u in enumerate(files)}
    paths["gone"] = "glbs/000-099/gone.glb"  # listed in object-paths, file missing on the server
    server.add(f"{HF}/object-paths.json.gz", object_paths_gz(paths))
    for u, data in files.items():
        server.add(f"{HF}/{paths[u]}", data)
    rows = [row(sha(d), f"https://sketchfab.com/3d-models/{u}", 6.1, license_hint="cc-by") for u, d in files.items()]
    rows.append(row(sha(b"wrong"), "https://sketchfab.com/3d-models/gone"))
    rows.append(row("e" * 64, "https://sketchfab.com/3d-models/notinpaths"))
    listing = server.add(f"{LIST}/ObjaverseXL_sketchfab.csv", listing_csv(rows))
    opts = {"listing": listing, "endpoint": server.base, "cache_dir": str(tmp_path / "cache"), "timeout": 1.0,
            "max_attempts": 3, "backoff_base": 0.01, "backoff_cap": 0.02, "limiter": RateLimiter()}
    return files, paths, opts


def test_sketchfab_end_to_end(server, tmp_path, sketchfab):
    files, paths, opts = sketchfab
    src = get_source("objaverse_sketchfab", **opts)
    recs = list(src.list_assets())
    assert len(recs) == 6 and recs[0].extra["license_hint"] == "cc-by" and recs[0].captions == ["a thing"]
    assert recs[0].locator == "uid0a" and recs[0].format == "glb"
    out = run_source(src, tmp_path / "dest")
    assert sorted(out.values()) == ["not_found", "not_found", "ok", "ok", "ok", "ok"]
    # the objaverse package's own urllib code made the requests, rewritten to the loopback server
    reqs = server.requests(f"{HF}/{paths['uid0a']}")
    assert len(reqs) == 1 and reqs[0]["headers"]["User-Agent"].startswith("Python-urllib")
    path, info = src.fetch_with_info(recs[1].as_row(), tmp_path / "again")
    assert info["local_path"] == f"raw/hf-objaverse-v1/{paths['uid1b']}"
    assert path.read_bytes() == files["uid1b"]


def test_sketchfab_sha_mismatch_deletes_cache(server, tmp_path, sketchfab):
    files, paths, opts = sketchfab
    server.add(f"{HF}/{paths['uid2c']}", b"tampered bytes")
    src = get_source("objaverse_sketchfab", **opts)
    rec = next(r for r in src.list_assets() if r.locator == "uid2c")
    with pytest.raises(ChecksumMismatch):
        src.fetch(rec.as_row(), tmp_path)
    assert not list((tmp_path / "cache" / "objaverse").rglob("uid2c.glb"))


def test_sketchfab_429_then_200_and_500(server, tmp_path, sketchfab):
    files, paths, opts = sketchfab
    server.script(f"{HF}/{paths['uid0a']}", [429, 429], body=files["uid0a"], headers={"Retry-After": "0.1"})
    server.script(f"{HF}/{paths['uid1b']}", [500, 503, 500], body=files["uid1b"])
    slept = []
    opts["sleep"] = slept.append
    src = get_source("objaverse_sketchfab", **opts)
    recs = {r.locator: r for r in src.list_assets()}
    p = src.fetch(recs["uid0a"].as_row(), tmp_path / "a")
    src.verify(recs["uid0a"].as_row(), p)
    assert slept[:2] == [0.1, 0.1]
    with pytest.raises(HttpError) as ei:
        src.fetch(recs["uid1b"].as_row(), tmp_path / "b")
    assert ei.value.retryable and ei.value.status == 500
    assert len(server.requests(f"{HF}/{paths['uid1b']}")) == 3


def test_sketchfab_stalled_is_timeout(server, tmp_path, sketchfab):
    files, paths, opts = sketchfab
    server.script(f"{HF}/{paths['uid3d']}", ["stall", "stall"], body=files["uid3d"], stall_s=3)
    opts.update(timeout=0.5, max_attempts=2)
    src = get_source("objaverse_sketchfab", **opts)
    rec = next(r for r in src.list_assets() if r.locator == "uid3d")
    with pytest.raises(DownloadTimeout):
        src.fetch(rec.as_row(), tmp_path)


# -- GitHub ---------------------------------------------------------------------------------------
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def github(server, tmp_path):
    obj = b"mtllib table.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl wood\nf 1 2 3\n"
    mtl = b"newmtl wood\nmap_Kd tex/wood.png\n"
    chair, star = glb("chair"), glb("star")
    root = f"repo-{COMMIT}"
    repo = zip_bytes({
        f"{root}/README.md": b"hi",
        f"{root}/models/chair.glb": chair,
        f"{root}/models/table.obj": obj,
        f"{root}/models/table.mtl": mtl,
        f"{root}/models/tex/wood.png": b"\x89PNG fake",
        f"{root}/models/my star.glb": star,
    })
    server.add(f"/org/repo/zip/{COMMIT}", repo)
    corrupt = bytearray(zip_bytes({f"other-{COMMIT}/a.glb": glb("box") * 3}))
    corrupt[80:400] = bytes(320)
    server.add(f"/org/broken/zip/{COMMIT}", bytes(corrupt))
    gh = "https://github.com/org/{repo}/blob/" + COMMIT + "/{path}"
    rows = [
        row(sha(chair), gh.format(repo="repo", path="models/chair.glb")),
        row(sha(obj), gh.format(repo="repo", path="models/table.obj")),
        row(sha(star), gh.format(repo="repo", path="models/my%20star.glb")),
        row("a" * 64, gh.format(repo="repo", path="models/missing.glb")),
        row("b" * 64, gh.format(repo="gone", path="x.glb")),
        row("c" * 64, gh.format(repo="gone", path="y.glb")),
        row("d" * 64, gh.format(repo="broken", path="a.glb")),
    ]
    listing = server.add("/ObjaverseXL_github.csv", listing_csv(rows))
    opts = {"listing": listing, "archive_url": server.base + "/{org}/{repo}/zip/{commit}",
            "cache_dir": str(tmp_path / "cache"), "read_timeout": 2, "max_attempts": 2, "backoff_base": 0.01,
            "limiter": RateLimiter()}
    return opts, {"chair": chair, "obj": obj}


def test_github_end_to_end(server, tmp_path, github):
    opts, data = github
    src = get_source("objaverse_github", **opts)
    recs = list(src.list_assets())
    assert recs[0].extra["local_path"] == "raw/github/repos/org/repo.zip/models/chair.glb"
    assert recs[0].extra["repo"] == "org/repo" and recs[0].extra["commit"] == COMMIT
    out = run_source(src, tmp_path / "dest")
    assert list(out.values()) == ["ok", "ok", "ok", "not_found", "not_found", "not_found", "corrupt_archive"]
    # one archive request per (repo, commit), however many members
    assert len(server.requests(f"/org/repo/zip/{COMMIT}")) == 1
    # the missing repository is remembered: its second asset made no request
    assert len(server.requests(f"/org/gone/zip/{COMMIT}")) == 1
    # the corrupt archive was dropped from the cache, so a retry fetches it again
    assert not (tmp_path / "cache" / "github" / "org" / "broken" / f"{COMMIT}.zip").exists()


def test_github_obj_is_packaged_with_side_files(tmp_path, github):
    opts, data = github
    src = get_source("objaverse_github", **opts)
    rec = list(src.list_assets())[1]
    p, info = src.fetch_with_info(rec.as_row(), tmp_path)
    assert is_package(p) and info["packaged"] and info["side_files"] == 2
    assert read_manifest(p)["entry"] == "models/table.obj"
    assert sorted(zipfile.ZipFile(p).namelist()) == ["models/table.mtl", "models/table.obj", "models/tex/wood.png",
                                                     "trellis_package.json"]
    src.verify(rec.as_row(), p)
    with open_asset(p) as mesh:
        assert mesh.read_bytes() == data["obj"] and (mesh.parent / "tex" / "wood.png").exists()


def test_github_concurrent_fetches_coalesce(server, tmp_path, github):
    opts, data = github
    server.add(f"/org/repo/zip/{COMMIT}", server.routes[f"/org/repo/zip/{COMMIT}"].body, slow_bps=400_000)
    src = get_source("objaverse_github", **opts)
    rec = list(src.list_assets())[0].as_row()
    errors = []

    def one(i):
        try:
            get_source("objaverse_github", **opts).fetch(rec, (tmp_path / f"t{i}").resolve())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    for i in range(4):
        (tmp_path / f"t{i}").mkdir()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors
    assert len(server.requests(f"/org/repo/zip/{COMMIT}")) == 1


def test_github_bad_identifier(tmp_path, github):
    opts, _ = github
    src = get_source("objaverse_github", **opts)
    with pytest.raises(BadInput):
        src.fetch({"file_identifier": "https://example.com/x", "sha256": "0" * 64}, tmp_path)
    _ = (MemberNotFound, NotFound, CorruptArchive, json)
