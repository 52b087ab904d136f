"""Safe extraction of zip and tar (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz) archives.

Refused with `UnsafeArchive` (error_type "unsafe_archive"):
- absolute names (`/x`, `\\x`, `C:x`), `..` components, NUL bytes, empty names;
- symlinks and hard links that point outside the target (links inside are skipped, never created);
- device files, fifos and anything else that is not a regular file or a directory;
- bombs: a member over `max_member_bytes`, a total over `max_total_bytes`, or an expansion ratio
  over `max_ratio` — counted on the bytes actually decompressed while streaming, never trusting
  header sizes;
- more than `max_members` members, or names deeper than `max_depth` components.
Nested archives are extracted as plain files and never recursed into.

When `members` is given only those are checked and extracted (a repository archive with one odd
file elsewhere still yields the files we need). Whatever fails, files written by the failed call are
removed again, and nothing is ever written outside `target`.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from curation.errors import CorruptArchive, MemberNotFound, UnsafeArchive, UnsupportedFormat

_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ExtractLimits:
    max_members: int = 200_000
    max_member_bytes: int = 8 << 30
    max_total_bytes: int = 64 << 30
    max_ratio: float = 200.0
    """Largest allowed uncompressed/compressed ratio, checked once `ratio_min_bytes` came out."""
    ratio_min_bytes: int = 1 << 20
    max_depth: int = 32
    chunk_size: int = 1 << 20


DEFAULT_LIMITS = ExtractLimits()


def archive_kind(path: str | os.PathLike) -> str:
    """'zip' or 'tar' by content (not by name); UnsupportedFormat otherwise."""
    p = str(path)
    if zipfile.is_zipfile(p):
        return "zip"
    try:
        if tarfile.is_tarfile(p):
            return "tar"
    except (OSError, tarfile.TarError, EOFError):
        pass
    name = Path(p).name.lower()
    if name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")):
        # named as an archive but unreadable as one: a truncated or damaged download
        raise CorruptArchive(f"{Path(p).name}: damaged or truncated archive (no readable zip/tar structure)")
    raise UnsupportedFormat(f"{Path(p).name}: not a zip or tar archive")


def check_name(name: str, limits: ExtractLimits = DEFAULT_LIMITS) -> str:
    """The normalised relative posix name of an archive member, or UnsafeArchive."""
    if not name or "\x00" in name:
        raise UnsafeArchive(f"member with an empty or NUL name: {name!r}")
    n = name.replace("\\", "/")
    if n.startswith("/") or _DRIVE.match(n):
        raise UnsafeArchive(f"absolute member path: {name!r}")
    parts = [p for p in n.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeArchive(f"path traversal in member: {name!r}")
    if not parts:
        raise UnsafeArchive(f"member with an empty name: {name!r}")
    if len(parts) > limits.max_depth:
        raise UnsafeArchive(f"member nested {len(parts)} deep (limit {limits.max_depth}): {name[:120]!r}...")
    return "/".join(parts)


def _inside(target_real: str, candidate: str) -> bool:
    return candidate == target_real or candidate.startswith(target_real.rstrip(os.sep) + os.sep)


@dataclass
class _Budget:
    limits: ExtractLimits
    archive_bytes: int
    total: int = 0
    files: list[Path] = field(default_factory=list)

    consumed_before: int = 0
    """Compressed bytes consumed by members finished earlier (zip)."""

    def add(self, name: str, n_out: int, member_out: int, member_consumed: int | None,
            archive_consumed: int | None = None) -> None:
        """Account `n_out` more output bytes. `member_consumed` / `archive_consumed` are the compressed
        bytes read so far (of this member / of the whole archive), so a bomb is caught after about
        `ratio_min_bytes` of output, not after `max_ratio` times its whole compressed size."""
        lim = self.limits
        self.total += n_out
        if member_out > lim.max_member_bytes:
            raise UnsafeArchive(f"archive bomb: member {name!r} expands past {lim.max_member_bytes} bytes")
        if self.total > lim.max_total_bytes:
            raise UnsafeArchive(f"archive bomb: total expansion past {lim.max_total_bytes} bytes")
        if member_consumed is not None and member_out >= lim.ratio_min_bytes:
            if member_out / max(member_consumed, 1) > lim.max_ratio:
                raise UnsafeArchive(f"archive bomb: member {name!r} expands more than {lim.max_ratio:.0f}x")
        if archive_consumed is None:
            archive_consumed = self.consumed_before + (member_consumed or 0) if member_consumed is not None else self.archive_bytes
        if self.total >= lim.ratio_min_bytes and self.total / max(archive_consumed, 1) > lim.max_ratio:
            raise UnsafeArchive(f"archive bomb: archive expands more than {lim.max_ratio:.0f}x")


class SafeArchive:
    """A zip or tar opened for validated reading. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, limits: ExtractLimits = DEFAULT_LIMITS) -> None:
        self.path = Path(path)
        self.limits = limits
        if not self.path.is_file():
            raise FileNotFoundError(f"no archive at {self.path}")
        self.kind = archive_kind(self.path)
        self.size = self.path.stat().st_size
        try:
            if self.kind == "zip":
                self._zip = zipfile.ZipFile(self.path)
                self._infos = self._zip.infolist()
            else:
                # Our own handle on the file: its position is the compressed bytes consumed so far.
                self._raw = open(self.path, "rb")
                self._tar = tarfile.open(fileobj=self._raw, mode="r:*")
                self._infos = self._tar.getmembers()
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
            self._close_raw()
            raise CorruptArchive(f"{self.path.name}: cannot read archive: {exc}") from None
        except Exception as exc:  # lzma/zlib errors inside tarfile
            self._close_raw()
            raise CorruptArchive(f"{self.path.name}: cannot read archive: {type(exc).__name__}: {exc}") from None
        if len(self._infos) > limits.max_members:
            self.close()
            raise UnsafeArchive(f"{self.path.name}: {len(self._infos)} members (limit {limits.max_members})")
        self._by_name: dict[str, object] = {}
        for info in self._infos:
            raw = info.filename if self.kind == "zip" else info.name
            try:
                key = check_name(raw, limits)
            except UnsafeArchive:
                key = raw  # kept under its raw name; refused when asked for or when extracting all
            self._by_name.setdefault(key, info)

    def _close_raw(self) -> None:
        raw = getattr(self, "_raw", None)
        if raw is not None:
            raw.close()

    def __enter__(self) -> SafeArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.kind == "zip":
            self._zip.close()
        else:
            self._tar.close()
            self._close_raw()

    # -- listing -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Normalised names of regular-file members (what `extract` can give)."""
        out = []
        for key, info in self._by_name.items():
            if self._is_file(info):
                out.append(key)
        return out

    def dirs(self) -> list[str]:
        """Explicit directory entries (3D-FUTURE discovers instances from them)."""
        return [k.rstrip("/") for k, info in self._by_name.items() if self._is_dir(info)]

    def _is_dir(self, info) -> bool:
        return info.is_dir() if self.kind == "zip" else info.isdir()

    def _is_file(self, info) -> bool:
        if self.kind == "zip":
            mode = (info.external_attr >> 16) & 0o170000
            return not info.is_dir() and mode in (0, stat.S_IFREG)
        return info.isreg()

    def has(self, name: str) -> bool:
        return name in self._by_name

    def _check_member(self, key: str, info, target_real: str) -> str:
        """Validate one member; returns 'file', 'dir' or 'skip' (an inside link)."""
        raw = info.filename if self.kind == "zip" else info.name
        rel = check_name(raw, self.limits)
        if self.kind == "zip":
            mode = (info.external_attr >> 16) & 0o170000
            if mode == stat.S_IFLNK:
                # The link target is the member's content; read it (small) to judge it.
                with self._zip.open(info) as f:
                    link = f.read(4096).decode("utf-8", "replace")
                self._check_link(rel, link, target_real, hard=False)
                return "skip"
            if info.is_dir():
                return "dir"
            if mode not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchive(f"special file (mode {oct(mode)}) in archive: {raw!r}")
            return "file"
        if info.issym() or info.islnk():
            self._check_link(rel, info.linkname, target_real, hard=info.islnk())
            return "skip"
        if info.isdir():
            return "dir"
        if info.isreg():
            return "file"
        raise UnsafeArchive(f"device, fifo or special member in archive: {raw!r}")

    def _check_link(self, rel: str, link: str, target_real: str, hard: bool) -> None:
        if not link or link.startswith(("/", "\\")) or _DRIVE.match(link):
            raise UnsafeArchive(f"{'hard' if hard else 'sym'}link {rel!r} points to an absolute path")
        base = "" if hard else posixpath.dirname(rel)
        resolved = posixpath.normpath(posixpath.join(base, link.replace("\\", "/")))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchive(f"{'hard' if hard else 'sym'}link {rel!r} leaves the target: -> {link!r}")

    # -- reading -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _stream(self, info) -> Iterator[IO[bytes]]:
        try:
            if self.kind == "zip":
                with self._zip.open(info) as f:
                    yield f
            else:
                f = self._tar.extractfile(info)
                if f is None:
                    raise UnsafeArchive(f"member {info.name!r} is not a regular file")
                with f:
                    yield f
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, UnsafeArchive):
                raise
            raise CorruptArchive(f"{self.path.name}: corrupt member: {exc}") from None

    def _compressed_size(self, info) -> int | None:
        return info.compress_size if self.kind == "zip" else None

    def _copy(self, info, name: str, out: IO[bytes], budget: _Budget) -> int:
        n = 0
        comp = self._compressed_size(info)
        is_zip = self.kind == "zip"
        raw = None if is_zip else self._raw
        chunk_size = min(self.limits.chunk_size, max(64 << 10, self.limits.ratio_min_bytes // 4))
        try:
            with self._stream(info) as f:
                while True:
                    chunk = f.read(chunk_size)
                    if not chunk:
                        break
                    n += len(chunk)
                    if is_zip:
                        # CPython's ZipExtFile: compressed bytes not yet read, plus input the
                        # decompressor holds back; without them, fall back to the member's size.
                        left = getattr(f, "_compress_left", None)
                        tail = len(getattr(getattr(f, "_decompressor", None), "unconsumed_tail", b"") or b"")
                        used = (comp - left - tail) if (left is not None and comp is not None) else comp
                        budget.add(name, len(chunk), n, used)
                    else:
                        budget.add(name, len(chunk), n, None, archive_consumed=raw.tell())
                    out.write(chunk)
            if is_zip and comp is not None:
                budget.consumed_before += comp
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
            if isinstance(exc, UnsafeArchive):
                raise
            raise CorruptArchive(f"{self.path.name}: corrupt member {name!r}: {exc}") from None
        except Exception as exc:
            if isinstance(exc, (UnsafeArchive, CorruptArchive)):
                raise
            # zlib.error, lzma.LZMAError, CRC errors
            raise CorruptArchive(f"{self.path.name}: corrupt member {name!r}: {type(exc).__name__}: {exc}") from None
        return n

    def read(self, name: str, max_bytes: int | None = None) -> bytes:
        """One member's bytes (bounded by the limits, or `max_bytes`)."""
        import io

        info = self._lookup(name)
        if not self._is_file(info):
            raise UnsafeArchive(f"member {name!r} is not a regular file")
        buf = io.BytesIO()
        lim = self.limits if max_bytes is None else ExtractLimits(**{**self.limits.__dict__, "max_member_bytes": max_bytes})
        self._copy(info, name, buf, _Budget(lim, self.size))
        return buf.getvalue()

    def _lookup(self, name: str):
        key = check_name(name, self.limits)
        info = self._by_name.get(key)
        if info is None:
            info = self._by_name.get(key + "/")
        if info is None:
            raise MemberNotFound(f"{key!r} is not in {self.path.name}")
        return info

    def extract(self, target: str | os.PathLike, members: Iterable[str] | None = None,
                strip_prefix: str = "") -> list[Path]:
        """Extract `members` (all when None) into `target`; returns the written files.

        `strip_prefix` drops a leading directory from the output names (e.g. GitHub's `<repo>-<sha>/`).
        """
        target = Path(target)
        target.mkdir(parents=True, exist_ok=True)
        target_real = os.path.realpath(target)
        if members is None:
            chosen = list(self._infos)
        else:
            chosen = [self._lookup(m) for m in members]
        plan = []
        for info in chosen:
            kind = self._check_member("", info, target_real)
            raw = info.filename if self.kind == "zip" else info.name
            rel = check_name(raw, self.limits)
            if strip_prefix:
                sp = strip_prefix.strip("/") + "/"
                if not (rel + "/").startswith(sp):
                    raise UnsafeArchive(f"member {rel!r} is outside the prefix {strip_prefix!r}")
                rel = rel[len(sp):]
                if not rel:
                    continue
            plan.append((kind, rel, info))

        budget = _Budget(self.limits, self.size)
        try:
            for kind, rel, info in plan:
                dest = os.path.join(target_real, *rel.split("/"))
                if kind == "skip":
                    continue
                if kind == "dir":
                    self._mkdirs(target_real, dest)
                    continue
                parent = os.path.dirname(dest)
                self._mkdirs(target_real, parent)
                if not _inside(target_real, os.path.realpath(parent)):
                    raise UnsafeArchive(f"member {rel!r} would be written outside the target")
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
                fd = os.open(dest, flags, 0o644)
                budget.files.append(Path(dest))
                with os.fdopen(fd, "wb") as out:
                    self._copy(info, rel, out, budget)
        except BaseException:
            for p in budget.files:
                with contextlib.suppress(OSError):
                    p.unlink()
            raise
        return budget.files

    @staticmethod
    def _mkdirs(target_real: str, path: str) -> None:
        if not _inside(target_real, os.path.realpath(path)):
            raise UnsafeArchive(f"directory {path!r} would be outside the target")
        os.makedirs(path, exist_ok=True)
        if not _inside(target_real, os.path.realpath(path)):
            raise UnsafeArchive(f"directory {path!r} resolves outside the target")


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike, members: Iterable[str] | None = None,
                 limits: ExtractLimits = DEFAULT_LIMITS, strip_prefix: str = "") -> list[Path]:
    """Extract `archive` (zip or tar) into `target` safely; see the module docstring."""
    with SafeArchive(archive, limits) as a:
        return a.extract(target, members, strip_prefix=strip_prefix)


def common_root(names: Iterable[str]) -> str:
    """The single top-level directory every name lives under ('' if there is none)."""
    names = list(names)
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    plain = [n for n in names if "/" not in n]
    if len(tops) == 1 and not plain:
        return tops.pop()
    return ""


__all__ = ["SafeArchive", "ExtractLimits", "DEFAULT_LIMITS", "safe_extract", "archive_kind", "check_name", "common_root"]
