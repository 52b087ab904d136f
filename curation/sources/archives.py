"""Sources whose assets come out of one big archive: ABO, 3D-FUTURE, Toys4k.

- **ABO** (`abo`): `abo-3dmodels.tar` (public, ~150 GB) from the `archive` option: a local path, or
  a URL (default the official S3 URL) downloaded once into the cache with resume. The tar is
  indexed once (member -> offset, size; `<cache>/abo/*.index.json`) so each asset is a seek and a
  bounded copy, not a scan. `root` may name an already-extracted folder instead. Member:
  `3dmodels/original/<file_identifier>`.
- **3D-FUTURE** (`future3d`): `3D-FUTURE-model.zip`, which the user must obtain (terms of use) and
  pass as `archive` (or an extracted `root`). Identity is the sha256 of `<id>/image.jpg` (G17);
  the asset is `raw_model.obj`; the whole model folder (obj, mtl, textures, image) is packaged as a
  zip so textures travel (see curation/package.py).
- **Toys4k** (`toys4k`): `toys4k_blend_files.zip`, provided by the user as `archive` (or `root`).
  Member: `toys4k_blend_files/<file_identifier>` (a `.blend`).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from curation.errors import CorruptArchive, MemberNotFound, MissingArchive, TooLarge, UnsafeArchive
from curation.extract import SafeArchive, check_name
from curation.http import downloader_from_options
from curation.package import write_package
from curation.sources.trellis500k import ListingSource, exclusive, file_key, move_into, shared


class ManualArchiveSource(ListingSource):
    """A source that reads members out of one archive given by the `archive` (or `root`) option."""

    archive_name: ClassVar[str]
    where_to_get: ClassVar[str]
    default_archive: ClassVar[str | None] = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._lock = threading.RLock()
        self._open: SafeArchive | None = None

    def missing(self, detail: str) -> MissingArchive:
        return MissingArchive(
            f"{self.name}: {detail}. This source needs {self.archive_name}: {self.where_to_get} "
            f"Then pass its path as the source option `archive` (or an extracted folder as `root`).")

    def archive_file(self) -> Path:
        loc = self.options.get("archive") or self.default_archive
        if not loc:
            raise self.missing("no `archive` option given")
        if str(loc).startswith(("http://", "https://")):
            return self._download(str(loc))
        p = Path(str(loc)).expanduser()
        if not p.is_file():
            raise self.missing(f"{p} does not exist")
        return p

    def _download(self, url: str) -> Path:
        dest = self.cache_dir / self.name / Path(url.split("?", 1)[0]).name
        if dest.exists():
            return dest
        with exclusive(dest.with_name(dest.name + ".lock")):
            if not dest.exists():
                downloader_from_options(self.options).fetch(url, dest, sha256=self.options.get("archive_sha256"))
        return dest

    def archive(self) -> SafeArchive:
        """The archive, opened once per process (its directory is read once) and shared by the
        source objects built per asset; reads on it are serialised by `self._lock`."""
        with self._lock:
            if self._open is None:
                path = self.archive_file()
                self._open, self._lock = shared(("archive",) + file_key(path),
                                                lambda: (SafeArchive(path), threading.RLock()))
            return self._open

    def root_dir(self) -> Path | None:
        r = self.options.get("root")
        if not r:
            return None
        p = Path(str(r)).expanduser().resolve()
        if not p.is_dir():
            raise self.missing(f"root folder {p} does not exist")
        return p

    def _from_root(self, rel: str, dest_dir: Path) -> Path:
        root = self.root_dir()
        assert root is not None
        rel = check_name(rel)
        src = (root / rel).resolve()
        if root not in src.parents or not src.is_file():
            raise MemberNotFound(f"{rel!r} is not under {root}")
        dest = dest_dir / src.name
        shutil.copyfile(src, dest)
        return dest

    def _extract_one(self, member: str, dest_dir: Path) -> Path:
        a = self.archive()
        tmp = Path(tempfile.mkdtemp(prefix=".x-", dir=dest_dir))
        try:
            with self._lock:  # one reader at a time on the shared archive handle
                written = a.extract(tmp, [member])
            return move_into(written[0], dest_dir, Path(member).name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# -- ABO -------------------------------------------------------------------------------------------
ABO_ARCHIVE_URL = "https://amazon-berkeley-objects.s3.amazonaws.com/archives/abo-3dmodels.tar"
ABO_PREFIX = "3dmodels/original/"


class AboSource(ManualArchiveSource):
    name = "abo"
    archive_name = "abo-3dmodels.tar"
    where_to_get = f"it is public at {ABO_ARCHIVE_URL} (CC BY-NC 4.0), fetched once into the cache by default."
    default_archive = ABO_ARCHIVE_URL
    needs = "nothing (public); ~150 GB of cache for abo-3dmodels.tar, or a local copy via `archive`"

    def format_of(self, file_identifier: str) -> str | None:
        return Path(file_identifier).suffix.lower().lstrip(".") or "glb"

    def local_path(self, file_identifier: str) -> str | None:
        return f"raw/{ABO_PREFIX}{file_identifier}"

    def make_record(self, core):
        rec = super().make_record(core)
        rec.license = rec.license or "CC-BY-NC-4.0"
        return rec

    # Index of an uncompressed tar: member -> (offset of data, size). Built once, kept beside the cache.
    def _index(self, tar_path: Path) -> dict[str, list[int]] | None:
        st = tar_path.stat()
        idx_path = self.cache_dir / "abo" / f"{tar_path.name}.{st.st_size}.{int(st.st_mtime)}.index.json"
        if idx_path.exists():
            return json.loads(idx_path.read_text())
        with exclusive(idx_path.with_name(idx_path.name + ".lock")):
            if idx_path.exists():
                return json.loads(idx_path.read_text())
            try:
                tf = tarfile.open(tar_path, "r:")  # uncompressed only: offsets must be seekable
            except tarfile.ReadError:
                return None
            index: dict[str, list[int]] = {}
            with tf:
                for m in tf:
                    if not m.isreg():
                        continue
                    try:
                        name = check_name(m.name)
                    except UnsafeArchive:
                        continue
                    index[name] = [m.offset_data, m.size]
            tmp = idx_path.with_name(idx_path.name + ".tmp")
            tmp.write_text(json.dumps(index))
            os.replace(tmp, idx_path)
            return index

    def fetch_with_info(self, asset: Mapping[str, Any], dest_dir: Path) -> tuple[Path, dict[str, Any]]:
        fid = asset["file_identifier"]
        member = check_name(ABO_PREFIX + fid)
        info: dict[str, Any] = {"local_path": self.local_path(fid)}
        if self.options.get("root"):
            out = self._from_root(member, dest_dir)
            info["bytes"] = out.stat().st_size
            return out, info
        tar_path = self.archive_file()
        idx = shared(("abo-index",) + file_key(tar_path), lambda: self._index(tar_path))
        if idx is None:  # compressed tar: stream through it (slow, but safe)
            out = self._extract_one(member, dest_dir)
        else:
            if member not in idx:
                raise MemberNotFound(f"{member!r} is not in {tar_path.name}")
            offset, size = idx[member]
            limit = self.options.get("max_bytes")
            if limit is not None and size > limit:
                raise TooLarge(f"{member} is {size} bytes, over the limit of {limit}")
            out = dest_dir / Path(member).name
            with open(tar_path, "rb") as src, open(out, "wb") as dst:
                src.seek(offset)
                left = size
                while left:
                    chunk = src.read(min(left, 1 << 20))
                    if not chunk:
                        raise CorruptArchive(f"{tar_path.name} ends inside {member}")
                    dst.write(chunk)
                    left -= len(chunk)
        info["bytes"] = out.stat().st_size
        return out, info


# -- 3D-FUTURE --------------------------------------------------------------------------------------
class Future3DSource(ManualArchiveSource):
    name = "future3d"
    archive_name = "3D-FUTURE-model.zip"
    where_to_get = ("request it from Alibaba's 3D-FUTURE page "
                    "(https://tianchi.aliyun.com/specials/promotion/alibaba-3d-future; accept the terms of use), "
                    "download 3D-FUTURE-model.zip.")
    needs = "3D-FUTURE-model.zip downloaded manually (terms of use) and passed as `archive`"
    ENTRY = "raw_model.obj"
    IDENTITY = "image.jpg"

    def format_of(self, file_identifier: str) -> str | None:
        return "zip"

    def local_path(self, file_identifier: str) -> str | None:
        return f"raw/{file_identifier}/{self.ENTRY}"

    def make_record(self, core):
        rec = super().make_record(core)
        rec.extra.update({"package_entry": self.ENTRY, "identity_member": self.IDENTITY})
        return rec

    def _members_by_dir(self) -> dict[str, list[str]]:
        a = self.archive()

        def build() -> dict[str, list[str]]:
            by: dict[str, list[str]] = {}
            for n in a.names():
                d, _, base = n.rpartition("/")
                by.setdefault(d, []).append(base)
            return by

        return shared(("by-dir",) + file_key(a.path), build)

    def fetch_with_info(self, asset: Mapping[str, Any], dest_dir: Path) -> tuple[Path, dict[str, Any]]:
        fid = check_name(asset["file_identifier"].rstrip("/"))
        info: dict[str, Any] = {"local_path": self.local_path(fid)}
        files: dict[str, bytes | Path] = {}
        if self.options.get("root"):
            folder = (self.root_dir() / fid).resolve()  # type: ignore[operator]
            if not folder.is_dir():
                raise MemberNotFound(f"model folder {fid!r} is not under {self.root_dir()}")
            for p in sorted(folder.iterdir()):
                if p.is_file() and not p.is_symlink():
                    files[p.name] = p
        else:
            names = self._members_by_dir().get(fid)
            if not names:
                raise MemberNotFound(f"model folder {fid!r} is not in {self.archive().path.name}")
            a = self.archive()
            with self._lock:
                for base in sorted(names):
                    files[base] = a.read(f"{fid}/{base}", max_bytes=self.options.get("max_bytes"))
        if self.ENTRY not in files:
            raise MemberNotFound(f"{fid}/{self.ENTRY} is missing")
        if self.IDENTITY not in files:
            raise MemberNotFound(f"{fid}/{self.IDENTITY} (the identity image, G17) is missing")
        out = write_package(dest_dir / f"{Path(fid).name}.zip", files, entry=self.ENTRY, identity=self.IDENTITY,
                            extra={"source": self.name, "model_id": Path(fid).name})
        info.update(bytes=out.stat().st_size, packaged=True, files=len(files))
        return out, info


# -- Toys4k ----------------------------------------------------------------------------------------
TOYS4K_PREFIX = "toys4k_blend_files/"


class Toys4kSource(ManualArchiveSource):
    name = "toys4k"
    archive_name = "toys4k_blend_files.zip"
    where_to_get = ("get it from the Toys4k dataset page (https://github.com/rehg-lab/lowshot-shapebias/tree/main/toys4k; "
                    "accept its license).")
    needs = "toys4k_blend_files.zip downloaded manually and passed as `archive`"

    def format_of(self, file_identifier: str) -> str | None:
        return Path(file_identifier).suffix.lower().lstrip(".") or "blend"

    def local_path(self, file_identifier: str) -> str | None:
        return f"raw/{TOYS4K_PREFIX}{file_identifier}"

    def fetch_with_info(self, asset: Mapping[str, Any], dest_dir: Path) -> tuple[Path, dict[str, Any]]:
        fid = check_name(asset["file_identifier"])
        info: dict[str, Any] = {"local_path": self.local_path(fid)}
        if self.options.get("root"):
            out = self._from_root(TOYS4K_PREFIX + fid, dest_dir)
        else:
            a = self.archive()
            member = TOYS4K_PREFIX + fid if a.has(TOYS4K_PREFIX + fid) else fid
            if not a.has(member):
                raise MemberNotFound(f"{TOYS4K_PREFIX + fid!r} is not in {a.path.name}")
            out = self._extract_one(member, dest_dir)
        info["bytes"] = out.stat().st_size
        return out, info


__all__ = ["AboSource", "Future3DSource", "Toys4kSource", "ABO_ARCHIVE_URL"]
