"""The store publishes atomically and never shows partial files."""

from __future__ import annotations

import pytest

from catalogs import layout
from catalogs.store import Store, is_temporary


@pytest.mark.parametrize("url", ["memory://store-test", "LOCAL"])
def test_write_read_and_listing(url, tmp_path):
    store = Store(str(tmp_path / "s") if url == "LOCAL" else url)
    rel = layout.voxels("a" * 64)
    assert store.write_bytes(rel, b"hello") == 5
    assert store.read_bytes(rel) == b"hello"
    assert store.exists(rel)
    assert store.listdir("voxels") == [rel]
    assert store.rel(store.uri(rel)) == rel
    with store.staged_file("meshes/x.ply") as p:
        p.write_bytes(b"mesh")
    assert store.read_bytes("meshes/x.ply") == b"mesh"
    assert not any(is_temporary(p) for p in store.walk_files())


def test_failed_write_leaves_nothing(tmp_path):
    store = Store(str(tmp_path))
    with pytest.raises(RuntimeError):
        with store.staged_file("voxels/y.ply") as p:
            p.write_bytes(b"partial")
            raise RuntimeError("writer died")
    assert not store.exists("voxels/y.ply")
    assert list(store.walk_files()) == []


def test_sweep_removes_temporaries_of_killed_writers(tmp_path):
    store = Store(str(tmp_path))
    store.write_bytes("voxels/ok.ply", b"x")
    (tmp_path / "voxels" / ".half.ply.tmp-123abc").write_bytes(b"partial")
    assert [p for p in store.walk_files()] == ["voxels/ok.ply"]  # readers never see it
    assert store.sweep_temporaries() == 1
    assert not (tmp_path / "voxels" / ".half.ply.tmp-123abc").exists()


def test_publish_dir_writes_marker_last(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("000.png", "transforms.json", "001.png"):
        (src / name).write_bytes(name.encode())
    store = Store(str(tmp_path / "root"))
    order = []
    real = store.put_file
    store.put_file = lambda local, rel: (order.append(rel), real(local, rel))[1]
    store.publish_dir(src, "renders/" + "b" * 64, last=("transforms.json",))
    assert order[-1].endswith("transforms.json")


@pytest.mark.parametrize("bad", ["../etc", "A" * 64, "a" * 63, "a" * 64 + "/x", ""])
def test_asset_ids_in_paths_must_be_sha256(bad):
    with pytest.raises(ValueError):
        layout.voxels(bad)
    with pytest.raises(ValueError):
        layout.features("../x", "a" * 64)
