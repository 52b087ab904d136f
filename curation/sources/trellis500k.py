"""Common base of the sources whose listing is a TRELLIS-500K CSV.

Options shared by every such source (all optional):
- `listing`: local path or URL of the listing (default `hf://datasets/JeffreyXiang/TRELLIS-500K/<file>`);
- `limit`: list only the first N rows (smoke runs);
- `cache_dir`: where downloads, repository archives and indexes are cached
  (default `$TRELLIS_DATA_CACHE` or `~/.cache/trellis-data`);
- `connect_timeout`, `read_timeout`, `attempt_deadline`, `max_attempts`, `backoff_base`,
  `backoff_cap`, `max_retry_after`, `max_bytes`, `rate_limit` (requests/s, or {host: rate}).

`fetch_with_info(asset, dest)` returns the path and a dict of metrics (the TRELLIS `local_path`,
bytes, attempts, cache hits) for the ingest record; `fetch` returns the path only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from curation import listing as L
from curation.errors import redact
from curation.sources.base import AssetRecord, ChecksumMismatch, Source, sha256_file


class ListingSource(Source):
    name: ClassVar[str]
    needs: ClassVar[str] = ""
    """What the user must provide (tokens, manual archives); shown by errors and docs."""

    # -- listing -------------------------------------------------------------------------------
    @property
    def listing_location(self) -> str:
        return str(self.options.get("listing") or L.default_location(self.name))

    @property
    def cache_dir(self) -> Path:
        d = Path(self.options.get("cache_dir") or L.default_cache_dir()).expanduser()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def list_assets(self) -> Iterator[AssetRecord]:
        df = L.read_listing(self.listing_location, self.options)
        limit = self.options.get("limit")
        seen: set[str] = set()
        for row in L.iter_rows(df, int(limit) if limit is not None else None):
            core = L.split_row(row)
            if len(core["sha256"]) != 64 or core["sha256"] in seen:
                continue  # malformed or repeated row; repeated sha256 breaks TRELLIS readers (G20)
            seen.add(core["sha256"])
            yield self.make_record(core)

    def make_record(self, core: dict[str, Any]) -> AssetRecord:
        """Turn the core fields of a listing row into this source's AssetRecord."""
        fid = core["file_identifier"]
        extra = dict(core["extra"])
        extra.setdefault("local_path", self.local_path(fid))
        return AssetRecord(
            sha256=core["sha256"], source=self.name, file_identifier=fid, locator=self.locator(fid),
            format=self.format_of(fid), license=core["license"], captions=core["captions"],
            aesthetic_score=core["aesthetic_score"], extra=extra,
        )

    def locator(self, file_identifier: str) -> str:
        return file_identifier

    def format_of(self, file_identifier: str) -> str | None:
        suffix = Path(file_identifier).suffix.lower().lstrip(".")
        return suffix or None

    def local_path(self, file_identifier: str) -> str | None:
        """The asset's `local_path` in the TRELLIS toolkit layout (DATA_FORMATS §2)."""
        return None

    # -- fetching --------------------------------------------------------------------------------
    def fetch(self, asset: Mapping[str, Any], dest_dir: Path) -> Path:
        return self.fetch_with_info(asset, Path(dest_dir))[0]

    def fetch_with_info(self, asset: Mapping[str, Any], dest_dir: Path) -> tuple[Path, dict[str, Any]]:
        raise NotImplementedError

    def verify(self, asset: Mapping[str, Any], path: Path) -> None:
        """sha256 of the file, or of the package's identity member for packaged assets."""
        from curation.package import is_package, member_sha256, read_manifest

        if is_package(path):
            man = read_manifest(path)
            member = man.get("identity") or man["entry"]
            got = member_sha256(path, member)
        else:
            got = sha256_file(path)
        if got != asset["sha256"]:
            raise ChecksumMismatch(redact(
                f"sha256 mismatch for {asset.get('file_identifier')}: listed {asset['sha256'][:12]}, got {got[:12]}"))


# -- coalescing locks ------------------------------------------------------------------------------
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Exclusive lock on `path` across threads of this process and processes of this machine.

    Concurrent fetches of the same repository archive wait here; the first downloads, the others
    find the finished file afterwards."""
    key = str(path)
    with _thread_locks_guard:
        tl = _thread_locks.setdefault(key, threading.Lock())
    with tl:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_shared: dict[tuple, Any] = {}
_shared_lock = threading.Lock()


def shared(key: tuple, factory):
    """A per-process memo: sources are built per asset (`get_source(...)` in every ingest task), so
    expensive state (archive directories, object-path indexes) lives here, keyed by what it depends
    on (e.g. path, size and mtime), and is built once per worker process."""
    with _shared_lock:
        if key in _shared:
            return _shared[key]
    value = factory()
    with _shared_lock:
        return _shared.setdefault(key, value)


def file_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def move_into(src: Path, dest_dir: Path, name: str | None = None, keep: bool = False) -> Path:
    """Move (or copy, when `keep`) `src` into `dest_dir`; returns the new path."""
    import shutil

    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / (name or src.name)
    if keep:
        shutil.copyfile(src, dest)
    else:
        try:
            os.replace(src, dest)
        except OSError:
            shutil.move(str(src), str(dest))
    return dest


__all__ = ["ListingSource", "exclusive", "move_into", "shared", "file_key"]
