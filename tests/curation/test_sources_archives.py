"""ABO, 3D-FUTURE, HSSD and Toys4k on fixtures in their real layouts."""

from __future__ import annotations

import logging
import zipfile

import pytest

from curation.errors import AuthRequired, MissingArchive, NotFound
from curation.http import RateLimiter
from curation.package import is_package, open_asset, read_manifest
from curation.sources import get_source
from curation.sources.base import ChecksumMismatch
from curation_fixtures import glb, listing_csv, row, run_source, sha, tar_bytes, write, zip_bytes


# -- ABO ------------------------------------------------------------------------------------------
@pytest.fixture
def abo(server, tmp_path):
    a, b = glb("chair"), glb("table")
    tar = tar_bytes({"3dmodels/original/0/B000A.glb": a, "3dmodels/original/1/B000B.glb": b,
                     "3dmodels/README": b"readme"})
    rows = [row(sha(a), "0/B000A.glb", 5.0), row(sha(b), "1/B000B.glb", 4.7),
            row(sha(b"x"), "1/B000B.glb", 4.6),  # a second row claiming another hash: mismatch
            row("f" * 64, "2/B000C.glb")]
    listing = write(tmp_path / "ABO.csv", listing_csv(rows))
    return tar, listing


def test_abo_local_tar_end_to_end(tmp_path, abo):
    tar, listing = abo
    path = write(tmp_path / "abo-3dmodels.tar", tar)
    src = get_source("abo", listing=str(listing), archive=str(path), cache_dir=str(tmp_path / "c"))
    recs = list(src.list_assets())
    assert recs[0].extra["local_path"] == "raw/3dmodels/original/0/B000A.glb" and recs[0].license == "CC-BY-NC-4.0"
    out = run_source(src, tmp_path / "d")
    assert list(out.values()) == ["ok", "ok", "checksum_mismatch", "not_found"]
    assert list((tmp_path / "c" / "abo").glob("*.index.json"))


def test_abo_archive_url_fetched_once(server, tmp_path, abo):
    tar, listing = abo
    url = server.add("/archives/abo-3dmodels.tar", tar)
    opts = dict(listing=str(listing), archive=url, cache_dir=str(tmp_path / "c"), limiter=RateLimiter())
    assert list(run_source(get_source("abo", **opts), tmp_path / "d1").values())[:2] == ["ok", "ok"]
    assert list(run_source(get_source("abo", **opts), tmp_path / "d2").values())[:2] == ["ok", "ok"]
    assert len(server.requests("/archives/abo-3dmodels.tar")) == 1


def test_abo_extracted_root(tmp_path, abo):
    tar, listing = abo
    import io
    import tarfile

    root = tmp_path / "raw"
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(root, filter="data")
    out = run_source(get_source("abo", listing=str(listing), root=str(root)), tmp_path / "d")
    assert list(out.values()) == ["ok", "ok", "checksum_mismatch", "not_found"]


# -- 3D-FUTURE --------------------------------------------------------------------------------------
def _future(tmp_path):
    models = {}
    entries = {}
    for mid in ("0001-aaaa", "0002-bbbb"):
        img = f"jpeg-of-{mid}".encode()
        obj = f"mtllib model.mtl\no {mid}\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n".encode()
        entries.update({f"3D-FUTURE-model/{mid}/raw_model.obj": obj,
                        f"3D-FUTURE-model/{mid}/model.mtl": b"newmtl m\nmap_Kd texture.png\n",
                        f"3D-FUTURE-model/{mid}/texture.png": b"\x89PNG tex",
                        f"3D-FUTURE-model/{mid}/image.jpg": img})
        models[mid] = (img, obj)
    entries["3D-FUTURE-model/0003-cccc/image.jpg"] = b"no model here"
    archive = write(tmp_path / "3D-FUTURE-model.zip", zip_bytes(entries, dirs=True))
    rows = [row(sha(img), f"3D-FUTURE-model/{mid}", 5.0) for mid, (img, _) in models.items()]
    rows.append(row(sha(b"no model here"), "3D-FUTURE-model/0003-cccc"))
    rows.append(row("1" * 64, "3D-FUTURE-model/9999-none"))
    listing = write(tmp_path / "3D-FUTURE.csv", listing_csv(rows))
    return archive, listing, models


def test_future3d_end_to_end_identity_is_image(tmp_path):
    archive, listing, models = _future(tmp_path)
    src = get_source("future3d", listing=str(listing), archive=str(archive))
    recs = list(src.list_assets())
    assert recs[0].extra["local_path"] == "raw/3D-FUTURE-model/0001-aaaa/raw_model.obj"
    assert recs[0].extra["package_entry"] == "raw_model.obj"
    out = run_source(src, tmp_path / "d")
    assert list(out.values()) == ["ok", "ok", "not_found", "not_found"]
    p = src.fetch(recs[0].as_row(), tmp_path)
    assert is_package(p) and read_manifest(p)["identity"] == "image.jpg"
    assert sorted(zipfile.ZipFile(p).namelist()) == ["image.jpg", "model.mtl", "raw_model.obj", "texture.png",
                                                     "trellis_package.json"]
    with open_asset(p) as mesh:
        assert mesh.name == "raw_model.obj" and (mesh.parent / "texture.png").exists()
    # packaging is deterministic: the same model always gives the same bytes
    (tmp_path / "again").mkdir()
    assert src.fetch(recs[0].as_row(), tmp_path / "again").read_bytes() == p.read_bytes()
    # a tampered image breaks the identity
    bad = dict(recs[1].as_row(), sha256=sha(b"other"))
    with pytest.raises(ChecksumMismatch):
        src.verify(bad, src.fetch(recs[1].as_row(), tmp_path / "again"))


def test_future3d_missing_archive_message(tmp_path):
    _, listing, _ = _future(tmp_path)
    src = get_source("future3d", listing=str(listing))
    assert len(list(src.list_assets())) == 4  # the listing needs no archive
    with pytest.raises(MissingArchive) as ei:
        src.fetch(next(iter(src.list_assets())).as_row(), tmp_path)
    msg = str(ei.value)
    assert "3D-FUTURE-model.zip" in msg and "tianchi.aliyun.com" in msg and "`archive`" in msg
    assert ei.value.error_type == "missing_archive" and not ei.value.retryable
    src = get_source("future3d", listing=str(listing), archive=str(tmp_path / "nope.zip"))
    with pytest.raises(MissingArchive, match="nope.zip does not exist"):
        src.fetch(next(iter(src.list_assets())).as_row(), tmp_path)


def test_future3d_extracted_root(tmp_path):
    archive, listing, _ = _future(tmp_path)
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "raw")
    out = run_source(get_source("future3d", listing=str(listing), root=str(tmp_path / "raw")), tmp_path / "d")
    assert list(out.values()) == ["ok", "ok", "not_found", "not_found"]


# -- Toys4k -------------------------------------------------------------------------------------------
def test_toys4k_end_to_end(tmp_path):
    blend_a, blend_b = b"BLENDER-v300 cat", b"BLENDER-v300 dog"
    archive = write(tmp_path / "toys4k_blend_files.zip", zip_bytes({
        "toys4k_blend_files/cat/cat_001/cat_001.blend": blend_a,
        "toys4k_blend_files/dog/dog_002/dog_002.blend": blend_b}))
    rows = [row(sha(blend_a), "cat/cat_001/cat_001.blend", 5.0), row(sha(blend_b), "dog/dog_002/dog_002.blend"),
            row("2" * 64, "cow/cow_003/cow_003.blend")]
    listing = write(tmp_path / "Toys4k.csv", listing_csv(rows))
    src = get_source("toys4k", listing=str(listing), archive=str(archive))
    recs = list(src.list_assets())
    assert recs[0].format == "blend" and recs[0].extra["local_path"] == "raw/toys4k_blend_files/cat/cat_001/cat_001.blend"
    assert list(run_source(src, tmp_path / "d").values()) == ["ok", "ok", "not_found"]
    with pytest.raises(MissingArchive, match="Toys4k"):
        get_source("toys4k", listing=str(listing)).fetch(recs[0].as_row(), tmp_path)


# -- HSSD ---------------------------------------------------------------------------------------------
HUB = "/datasets/hssd/hssd-models/resolve/main"
TOKEN = "hf_" + "Zy9Xw8Vu7Ts6Rq5Po4Nm3Lk2"
REPO_COMMIT = "a" * 40


@pytest.fixture
def hssd(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    a, b = glb("chair"), glb("torus")
    server.add(f"{HUB}/objects/1/1abc.glb", a, hf_commit=REPO_COMMIT)
    server.add(f"{HUB}/objects/2/2def.glb", b, hf_commit=REPO_COMMIT)
    server.add(f"{HUB}/objects/3/3bad.glb", b, hf_commit=REPO_COMMIT)
    rows = [row(sha(a), "objects/1/1abc.glb", 5.0), row(sha(b), "objects/2/2def.glb"),
            row(sha(glb("star")), "objects/3/3bad.glb"), row("3" * 64, "objects/4/4none.glb")]
    listing = write(tmp_path / "HSSD.csv", listing_csv(rows))
    return {"listing": str(listing), "endpoint": server.base, "cache_dir": str(tmp_path / "c"),
            "max_attempts": 2, "backoff_base": 0.01, "limiter": RateLimiter()}


def test_hssd_end_to_end_token_never_shown(server, tmp_path, hssd, caplog):
    caplog.set_level(logging.DEBUG)
    src = get_source("hssd", **hssd)
    recs = list(src.list_assets())
    assert recs[0].extra["local_path"] == "raw/objects/1/1abc.glb"
    out = run_source(src, tmp_path / "d")
    assert list(out.values()) == ["ok", "ok", "checksum_mismatch", "not_found"]
    # the token was sent to the hub, and appears nowhere else
    gets = [r for r in server.requests(f"{HUB}/objects/1/1abc.glb")]
    assert gets and all({k.lower(): v for k, v in r["headers"].items()}.get("authorization") == f"Bearer {TOKEN}" for r in gets)
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(src.options) and TOKEN not in repr([r.as_row() for r in recs])
    _, info = src.fetch_with_info(recs[1].as_row(), tmp_path / "x")
    assert TOKEN not in repr(info)


def test_hssd_gated_and_errors(server, tmp_path, hssd):
    server.script(f"{HUB}/objects/1/1abc.glb", [403, 403, 403, 403], hf_commit=REPO_COMMIT)
    src = get_source("hssd", **hssd)
    rec = next(iter(src.list_assets())).as_row()
    with pytest.raises(AuthRequired) as ei:
        src.fetch(rec, tmp_path)
    assert TOKEN not in str(ei.value) and "hssd-models" in str(ei.value)
    with pytest.raises(NotFound):
        src.fetch(dict(rec, file_identifier="objects/9/none.glb"), tmp_path)


def test_damaged_user_archive_is_corrupt(tmp_path):
    archive, listing, _ = _future(tmp_path)
    trunc = write(tmp_path / "trunc" / "3D-FUTURE-model.zip", archive.read_bytes()[: archive.stat().st_size // 2])
    src = get_source("future3d", listing=str(listing), archive=str(trunc))
    out = run_source(src, tmp_path / "d")
    assert set(out.values()) == {"corrupt_archive"}


def test_hssd_429_then_200(server, tmp_path, hssd):
    a = glb("chair")
    server.script(f"{HUB}/objects/1/1abc.glb", [429], body=a, hf_commit=REPO_COMMIT, headers={"Retry-After": "0"})
    src = get_source("hssd", **hssd)
    rec = next(iter(src.list_assets())).as_row()
    src.verify(rec, src.fetch(rec, tmp_path))


def test_through_the_ingest_stage(tmp_path):
    """The lead's ingest stage fetches, verifies and publishes our packaged assets under raw/."""
    from catalogs.stage import AssetTask, StageContext
    from catalogs.store import Store
    from curation.ingest import IngestStage

    archive, listing, models = _future(tmp_path)
    opts = {"listing": str(listing), "archive": str(archive)}
    rec = next(iter(get_source("future3d", **opts).list_assets()))
    store = Store(str(tmp_path / "store"))
    stage = IngestStage(config={"sources": {"future3d": opts}})
    res = stage.run(AssetTask(sha256=rec.sha256, asset=rec.as_row(), inputs={}), StageContext(store=store))
    assert res.metrics["local_path"] == f"raw/future3d/{rec.sha256}.zip"
    with open_asset(store.path(res.metrics["local_path"])) as mesh:
        assert mesh.read_bytes() == models["0001-aaaa"][1]
