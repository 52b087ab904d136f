"""Extraction-attack corpus: everything is refused and nothing lands outside the target."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from curation.errors import CorruptArchive, UnsafeArchive
from curation.extract import ExtractLimits, SafeArchive, safe_extract


def _zip(path: Path, entries: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in entries:
            zi = zipfile.ZipInfo(name)
            zi.compress_type = zipfile.ZIP_DEFLATED
            if mode is not None:
                zi.external_attr = mode << 16
            z.writestr(zi, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], datas: dict[str, bytes] | None = None, mode: str = "w") -> Path:
    datas = datas or {}
    with tarfile.open(path, mode) as t:
        for m in members:
            d = datas.get(m.name)
            if d is not None:
                m.size = len(d)
                t.addfile(m, io.BytesIO(d))
            else:
                t.addfile(m)
    return path


def _ti(name: str, type_=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.linkname = linkname
    ti.mode = 0o644
    return ti


@pytest.fixture
def box(tmp_path):
    """(archive dir, target, check) where check() asserts nothing was written outside target."""
    arch = tmp_path / "archives"
    arch.mkdir()
    out = tmp_path / "out"
    target = out / "target"
    target.mkdir(parents=True)

    def check():
        assert sorted(p.name for p in out.iterdir()) == ["target"], list(out.iterdir())
        assert not (tmp_path / "evil.txt").exists()
        assert not list(tmp_path.glob("**/evil*")), list(tmp_path.glob("**/evil*"))

    return arch, target, check


def test_zip_slip(box):
    arch, target, check = box
    for name in ("../evil.txt", "a/../../evil.txt", "..\\evil.txt", "ok/../../../evil.txt"):
        z = _zip(arch / "slip.zip", [("fine.txt", b"ok", None), (name, b"pwned", None)])
        with pytest.raises(UnsafeArchive, match="traversal"):
            safe_extract(z, target)
        check()
    assert not any(target.iterdir())


def test_absolute_paths(box, tmp_path):
    arch, target, check = box
    abs_name = str(tmp_path / "evil_abs.txt")
    for name in (abs_name, "C:/evil.txt", "\\evil.txt"):
        z = _zip(arch / "abs.zip", [(name, b"pwned", None)])
        with pytest.raises(UnsafeArchive, match="absolute"):
            safe_extract(z, target)
    t = _tar(arch / "abs.tar", [_ti(abs_name)], {abs_name: b"pwned"})
    with pytest.raises(UnsafeArchive, match="absolute"):
        safe_extract(t, target)
    assert not Path(abs_name).exists()
    check()


def test_symlink_escape_zip_and_tar(box):
    arch, target, check = box
    z = _zip(arch / "ln.zip", [("link", b"../../", stat.S_IFLNK | 0o777), ("link/evil.txt", b"pwned", None)])
    with pytest.raises(UnsafeArchive, match="leaves the target"):
        safe_extract(z, target)
    t = _tar(arch / "ln.tar", [_ti("link", tarfile.SYMTYPE, "/etc"), _ti("link/evil.txt")], {"link/evil.txt": b"x"})
    with pytest.raises(UnsafeArchive, match="absolute"):
        safe_extract(t, target)
    t = _tar(arch / "ln2.tar", [_ti("a/link", tarfile.SYMTYPE, "../../outside")])
    with pytest.raises(UnsafeArchive, match="leaves the target"):
        safe_extract(t, target)
    # a link that stays inside is skipped (never created), the rest extracts
    t = _tar(arch / "ln3.tar", [_ti("a/f.txt"), _ti("a/link", tarfile.SYMTYPE, "f.txt")], {"a/f.txt": b"ok"})
    files = safe_extract(t, target)
    assert [p.name for p in files] == ["f.txt"] and not (target / "a" / "link").exists()
    check()


def test_hard_link(box):
    arch, target, check = box
    for link in ("/etc/passwd", "../../evil.txt"):
        t = _tar(arch / "hl.tar", [_ti("hl", tarfile.LNKTYPE, link)])
        with pytest.raises(UnsafeArchive):
            safe_extract(t, target)
    check()


def test_device_and_fifo(box):
    arch, target, check = box
    for typ in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        t = _tar(arch / "dev.tar", [_ti("dev", typ)])
        with pytest.raises(UnsafeArchive, match="special"):
            safe_extract(t, target)
    check()


@pytest.fixture(scope="session")
def zip_bomb(tmp_path_factory) -> Path:
    """1 GiB of zeros in a ~1 MB zip, written streaming (never in memory)."""
    p = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("small.txt", "w") as f:
            f.write(b"hello")
        with z.open("zeros.bin", "w", force_zip64=True) as f:
            for _ in range(1024):
                f.write(zeros)
    return p


def test_zip_bomb_1gb(box, zip_bomb):
    arch, target, check = box
    assert zip_bomb.stat().st_size < 5 << 20
    t = time.monotonic()
    with pytest.raises(UnsafeArchive, match="bomb"):
        safe_extract(zip_bomb, target)
    assert time.monotonic() - t < 1.0  # refused after ~1 MiB of output, not after 200x its size
    # nothing half-written is left behind, not even the members extracted before the bomb
    assert not any(p.is_file() for p in target.rglob("*"))
    # asking for the bomb alone is refused too; asking for the small member only works
    with pytest.raises(UnsafeArchive):
        safe_extract(zip_bomb, target, members=["zeros.bin"])
    assert [p.name for p in safe_extract(zip_bomb, target, members=["small.txt"])] == ["small.txt"]
    check()


def test_zip_bomb_lying_header(box, tmp_path):
    """A zip whose header understates the file size: bytes are counted, not trusted."""
    arch, target, check = box
    p = arch / "liar.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("z.bin", bytes(4 << 20))
    with SafeArchive(p, ExtractLimits(max_member_bytes=1 << 20, max_ratio=1e9)) as a:
        a._infos[0].file_size = 10  # what a forged header would claim
        with pytest.raises((UnsafeArchive, CorruptArchive)):
            a.extract(target)
    check()


def test_tar_gz_bomb_and_total(box):
    arch, target, check = box
    p = arch / "bomb.tar.gz"
    zeros = bytes(1 << 20)
    with tarfile.open(p, "w:gz", compresslevel=1) as t:
        ti = _ti("zeros.bin")
        ti.size = 100 << 20

        class Zeros(io.RawIOBase):
            left = ti.size

            def readinto(self, b):
                n = min(len(b), self.left, len(zeros))
                b[:n] = zeros[:n]
                self.left -= n
                return n

        t.addfile(ti, Zeros())
    t = time.monotonic()
    with pytest.raises(UnsafeArchive, match="bomb"):
        safe_extract(p, target)
    assert time.monotonic() - t < 1.0
    z = _zip(arch / "many.zip", [(f"f{i}.txt", os.urandom(2000), None) for i in range(20)])
    with pytest.raises(UnsafeArchive, match="total"):
        safe_extract(z, target, limits=ExtractLimits(max_total_bytes=10_000))
    check()


def test_tar_xz_ok(box):
    arch, target, _ = box
    p = _tar(arch / "ok.tar.xz", [_ti("d/a.txt"), _ti("d/b.txt")], {"d/a.txt": b"A", "d/b.txt": b"B"}, mode="w:xz")
    files = safe_extract(p, target, members=["d/b.txt"])
    assert [f.read_bytes() for f in files] == [b"B"] and not (target / "d" / "a.txt").exists()


def test_too_many_members(box):
    arch, target, check = box
    z = _zip(arch / "many.zip", [(f"f{i}", b"x", None) for i in range(50)])
    with pytest.raises(UnsafeArchive, match="members"):
        SafeArchive(z, ExtractLimits(max_members=10))
    check()


def test_deep_nesting_50(box):
    arch, target, check = box
    deep = "/".join(["d"] * 50) + "/f.txt"
    z = _zip(arch / "deep.zip", [(deep, b"x", None)])
    with pytest.raises(UnsafeArchive, match="deep"):
        safe_extract(z, target)
    # 50 archives nested inside each other: only the outer level is extracted, never recursed
    inner = b"core"
    name = "core.txt"
    for i in range(50):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z2:
            z2.writestr(name, inner)
        inner, name = buf.getvalue(), f"level{i}.zip"
    (arch / "nested.zip").write_bytes(inner)
    files = safe_extract(arch / "nested.zip", target)
    assert [f.name for f in files] == ["level48.zip"]
    assert sorted(p.name for p in target.rglob("*")) == ["level48.zip"]
    check()


def test_corrupt_archive(box):
    arch, target, check = box
    good = _zip(arch / "good.zip", [("a.txt", os.urandom(5000), None)])
    data = bytearray(good.read_bytes())
    data[60:200] = os.urandom(140)  # damage the compressed stream
    bad = arch / "bad.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptArchive):
        safe_extract(bad, target)
    trunc = arch / "trunc.tar.gz"
    _tar(arch / "t.tar.gz", [_ti("a.txt")], {"a.txt": os.urandom(50_000)}, mode="w:gz")
    trunc.write_bytes((arch / "t.tar.gz").read_bytes()[:2000])
    with pytest.raises(CorruptArchive):
        safe_extract(trunc, target)
    check()
