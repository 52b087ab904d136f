"""The artifact store: an fsspec URL root with the TRELLIS dataset layout and atomic publishing.

Every write goes to a hidden temporary name beside its destination and is then moved into place
(a rename on local disks; object stores make an object visible only once its upload completes, so
there a direct put is already atomic). A reader therefore never sees a partial file, and a crash
leaves at worst a temporary name that `sweep_temporaries` removes on the next run.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec

TMP_MARK = ".tmp-"
"""Infix of every temporary name; listings and reconcile ignore names that contain it."""


def is_temporary(path: str) -> bool:
    return TMP_MARK in posixpath.basename(path.rstrip("/"))


class Store:
    """A dataset root addressed by URL (`/data/x`, `file:///data/x`, `memory://x`, `s3://bucket/x`)."""

    def __init__(self, url: str, **storage_options) -> None:
        self.url = url.rstrip("/") if "://" in url else str(Path(url).resolve())
        self.storage_options = storage_options
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.local = self.fs.protocol in ("file", "local") or "file" in tuple(self.fs.protocol)
        # Object stores publish on completed upload; only file systems need temp-name + rename.
        self.atomic_rename = self.local or "memory" in tuple(self.fs.protocol)
        if self.local:
            os.makedirs(self.root, exist_ok=True)

    # -- paths ---------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """Full path of `rel` inside the file system of this store."""
        return posixpath.join(self.root, rel)

    def uri(self, rel: str) -> str:
        """URL of `rel` that fsspec can open from any process (recorded in the catalog)."""
        return self.fs.unstrip_protocol(self.path(rel))

    def rel(self, uri_or_path: str) -> str:
        """Inverse of `uri`/`path`: the root-relative name."""
        p = self.fs._strip_protocol(uri_or_path)
        root = self.fs._strip_protocol(self.root)
        return posixpath.relpath(p, root)

    # -- reading -------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def open(self, rel: str, mode: str = "rb"):
        if "w" in mode or "a" in mode:
            raise ValueError("use write_bytes/put_file/staged_file to write atomically")
        return self.fs.open(self.path(rel), mode)

    def size(self, rel: str) -> int:
        return int(self.fs.size(self.path(rel)))

    @contextlib.contextmanager
    def local_copy(self, rel: str) -> Iterator[Path]:
        """A local file path for `rel` (the file itself on local stores, a temporary copy otherwise).

        Libraries such as open3d, trimesh or Blender want a real file name.
        """
        if self.local:
            yield Path(self.path(rel))
            return
        suffix = posixpath.basename(rel)
        with tempfile.TemporaryDirectory(prefix="trellis-in-") as d:
            dest = Path(d) / suffix
            self.fs.get_file(self.path(rel), str(dest))
            yield dest

    def listdir(self, rel: str) -> list[str]:
        """Root-relative names directly under `rel`, temporaries excluded."""
        full = self.path(rel)
        if not self.fs.exists(full):
            return []
        return sorted(self.rel(p) for p in self.fs.ls(full, detail=False) if not is_temporary(p))

    def walk_files(self, rel: str = "") -> Iterator[str]:
        """Every published file under `rel` (root-relative), temporaries excluded."""
        full = self.path(rel) if rel else self.root
        if not self.fs.exists(full):
            return
        for p in self.fs.find(full):
            r = self.rel(p)
            if not any(is_temporary(part) for part in r.split("/")):
                yield r

    # -- writing -------------------------------------------------------------------------------
    def _temp_name(self, rel: str) -> str:
        d, name = posixpath.split(rel)
        return posixpath.join(d, f".{name}{TMP_MARK}{uuid.uuid4().hex[:12]}")

    def _publish(self, tmp_rel: str, rel: str) -> None:
        if self.local:
            os.replace(self.path(tmp_rel), self.path(rel))
        else:
            self.fs.mv(self.path(tmp_rel), self.path(rel))

    def _ensure_parent(self, rel: str) -> None:
        if self.local:
            os.makedirs(posixpath.dirname(self.path(rel)), exist_ok=True)

    def write_bytes(self, rel: str, data: bytes) -> int:
        """Write `data` to `rel` atomically; returns the byte count."""
        self._ensure_parent(rel)
        if not self.atomic_rename:
            self.fs.pipe_file(self.path(rel), data)
            return len(data)
        tmp = self._temp_name(rel)
        try:
            if self.local:
                with open(self.path(tmp), "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            else:
                self.fs.pipe_file(self.path(tmp), data)
            self._publish(tmp, rel)
        except BaseException:
            self._discard(tmp)
            raise
        return len(data)

    def put_file(self, local: str | os.PathLike, rel: str) -> int:
        """Publish a local file under `rel` atomically; returns its size."""
        self._ensure_parent(rel)
        size = os.path.getsize(local)
        if not self.atomic_rename:
            self.fs.put_file(str(local), self.path(rel))
            return size
        tmp = self._temp_name(rel)
        try:
            if self.local:
                shutil.copyfile(local, self.path(tmp))
            else:
                self.fs.put_file(str(local), self.path(tmp))
            self._publish(tmp, rel)
        except BaseException:
            self._discard(tmp)
            raise
        return size

    @contextlib.contextmanager
    def staged_file(self, rel: str) -> Iterator[Path]:
        """Yield a local path to write; on clean exit it is published as `rel` atomically."""
        with tempfile.TemporaryDirectory(prefix="trellis-out-") as d:
            local = Path(d) / posixpath.basename(rel)
            yield local
            self.put_file(local, rel)

    def publish_dir(self, local_dir: str | os.PathLike, rel_dir: str, last: tuple[str, ...] = ()) -> int:
        """Publish every file of `local_dir` under `rel_dir`; the names in `last` go last.

        Each file is published atomically; the `last` files (e.g. `transforms.json`) mark the
        directory complete, so a reader that checks for them never sees a half-written directory.
        Returns the total byte count.
        """
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name in last)
        total = 0
        for p in files:
            total += self.put_file(p, posixpath.join(rel_dir, p.relative_to(local_dir).as_posix()))
        return total

    def delete(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel), recursive=True)

    def _discard(self, tmp_rel: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.rm(self.path(tmp_rel))

    def sweep_temporaries(self) -> int:
        """Remove temporaries left by killed writers; run by the single driver before a build."""
        if not self.fs.exists(self.root):
            return 0
        n = 0
        for p in self.fs.find(self.root):
            if is_temporary(p):
                self._discard(self.rel(p))
                n += 1
        return n
