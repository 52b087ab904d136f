"""Objaverse-XL sources: Sketchfab objects (through the `objaverse` package) and GitHub objects.

**Sketchfab** (`objaverse_sketchfab`): the `.glb` files live in the HF dataset `allenai/objaverse`
at `glbs/<000-NNN>/<uid>.glb`; `object-paths.json.gz` maps uid -> that path. Downloads run through
`objaverse.xl.SketchfabDownloader` (its `_get_object_paths` and per-object `_download_object`,
the code `download_objects` runs for each object). `download_objects` itself is not called: it
starts a multiprocessing pool per call, and a `urllib.error.HTTPError` raised inside that pool cannot
be unpickled by the parent. The package hard-codes `https://huggingface.co/...` and calls
`urllib.request.urlopen` without a timeout; a small urllib handler installed in this process
(`UrllibRouter`) rewrites that base to the `endpoint` option (a mirror, or a loopback server in
tests), gives every request connect/read timeouts and turns HTTP errors into our typed errors.
The sha256 is verified here (the toolkit did not, G16); a mismatching cached file is deleted.

**GitHub** (`objaverse_github`): `file_identifier` is
`https://github.com/<org>/<repo>/blob/<commit>/<path>`. Each repository archive is fetched once per
(repo, commit) into the cache (`archive_url` template, default GitHub's codeload zip); concurrent
fetches of the same archive wait on one lock file and reuse the result; an archive that is gone
(404) is remembered for `missing_ttl_s`. Only the needed member is extracted, safely; an `.obj`/
`.gltf` whose side files (mtl, textures, buffers) are in the repository is packaged with them.
The TRELLIS `local_path` (`raw/github/repos/<org>/<repo>.zip/<path>`) is kept in `extra`.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from catalogs.stage import BadInput
from curation.errors import (
    ConnectionFailed,
    CorruptArchive,
    DownloadError,
    DownloadTimeout,
    HttpError,
    MemberNotFound,
    NotFound,
    RateLimited,
    UnsupportedFormat,
    redact,
)
from curation.extract import SafeArchive, common_root
from curation.http import RetryPolicy, default_limiter, downloader_from_options, parse_retry_after
from curation.package import dependencies, package_from_archive
from curation.sources.base import ChecksumMismatch, sha256_file
from curation.sources.trellis500k import ListingSource, exclusive, file_key, move_into, shared

log = logging.getLogger("trellis_data.curation.objaverse")

HF_BASE = "https://huggingface.co"
T = TypeVar("T")


# -- urllib routing for the objaverse package ------------------------------------------------------
class UrllibRouter(urllib.request.BaseHandler):
    """Rewrites URL prefixes, sets default timeouts and raises typed errors for HTTP failures.

    Installed process-wide (urllib has one global opener); it only touches requests whose URL starts
    with a configured prefix, and only fills in timeouts where the caller gave none."""

    handler_order = 100  # before the HTTPErrorProcessor (1000), so we see error responses first

    def __init__(self) -> None:
        self.rewrites: dict[str, str] = {}
        self.timeout: float | None = None
        self.lock = threading.Lock()

    def _route(self, req: urllib.request.Request) -> urllib.request.Request:
        url = req.full_url
        for prefix, repl in self.rewrites.items():
            if url.startswith(prefix):
                req.full_url = repl + url[len(prefix):]
                req.host = urlsplit(req.full_url).netloc  # type: ignore[misc]
                break
        if self.timeout is not None and req.timeout is socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
            req.timeout = self.timeout
        return req

    http_request = https_request = _route

    def _check(self, req, resp):
        code = resp.status
        if code >= 400:
            url = req.full_url
            with_body = f"HTTP {code} for {url}"
            if code in (404, 410):
                raise NotFound(with_body, status=code, url=url)
            if code == 429:
                ra = parse_retry_after(resp.headers.get("Retry-After"))
                raise RateLimited(with_body, status=code, url=url, retry_after=ra)
            if code == 408:
                raise DownloadTimeout(with_body, status=code, url=url)
            raise HttpError(with_body, status=code)
        return resp

    http_response = https_response = _check


_router = UrllibRouter()


def _install_router(rewrites: Mapping[str, str], timeout: float | None) -> None:
    with _router.lock:
        _router.rewrites.update(rewrites)
        if timeout is not None:
            _router.timeout = timeout
        current = getattr(urllib.request, "_opener", None)
        if current is None or _router not in getattr(current, "handlers", []):
            urllib.request.install_opener(urllib.request.build_opener(_router))


def _typed(exc: BaseException, what: str) -> DownloadError | None:
    """Map what urllib / the objaverse package raised onto our typed errors (None: not ours)."""
    if isinstance(exc, DownloadError):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        code = exc.code
        if code in (404, 410):
            return NotFound(f"HTTP {code} for {what}", status=code)
        if code == 429:
            return RateLimited(f"429 for {what}", status=code, retry_after=parse_retry_after(exc.headers.get("Retry-After")))
        return HttpError(f"HTTP {code} for {what}", status=code)
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason).lower():
            return DownloadTimeout(f"timeout fetching {what}: {reason}")
        return ConnectionFailed(f"connection failed fetching {what}: {reason}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return DownloadTimeout(f"timeout (stalled connection) fetching {what}")
    if isinstance(exc, (ConnectionError, http.client.HTTPException, OSError)) and not isinstance(exc, FileNotFoundError):
        return ConnectionFailed(f"connection failed fetching {what}: {type(exc).__name__}: {exc}")
    return None


def with_retries(fn: Callable[[], T], what: str, host: str, options: Mapping[str, Any]) -> T:
    """Run `fn` under the per-host rate limit with capped exponential backoff on retryable errors."""
    pol = RetryPolicy()
    for k in ("max_attempts", "backoff_base", "backoff_cap", "max_retry_after"):
        if options.get(k) is not None:
            setattr(pol, k, options[k])
    sleep = options.get("sleep") or time.sleep
    limiter = options.get("limiter") or default_limiter()
    rng = random.Random()
    attempt = 0
    while True:
        attempt += 1
        limiter.acquire(host)
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - mapped below
            typed = _typed(exc, what)
            if typed is None:
                raise
            if not typed.retryable or attempt >= pol.max_attempts:
                raise typed from None
            ra = getattr(typed, "retry_after", None)
            if ra is not None and ra > pol.max_retry_after:
                raise typed from None
            delay = ra if ra is not None else pol.backoff(attempt - 1, rng)
            log.info(redact(f"retry {attempt}/{pol.max_attempts} of {what} in {delay:.2f}s: {typed}"))
            sleep(delay)


# -- Sketchfab ---------------------------------------------------------------------------------
class ObjaverseSketchfabSource(ListingSource):
    """Options (besides the listing ones): `endpoint` (replaces https://huggingface.co for the
    objaverse package; default unchanged), `timeout` (connect/read, s, default 60), `keep_cache`."""

    name = "objaverse_sketchfab"
    needs = "nothing (public); the object-paths index (~ tens of MB) is cached once per node"

    def locator(self, file_identifier: str) -> str:
        return file_identifier.rstrip("/").split("/")[-1]

    def format_of(self, file_identifier: str) -> str | None:
        return "glb"

    def local_path(self, file_identifier: str) -> str | None:
        return None  # needs object-paths.json.gz; recorded at fetch time

    def _setup(self) -> tuple[Any, str]:
        from objaverse.xl import SketchfabDownloader

        endpoint = (self.options.get("endpoint") or HF_BASE).rstrip("/")
        rewrites = {HF_BASE + "/": endpoint + "/"} if endpoint != HF_BASE else {}
        _install_router(rewrites, float(self.options.get("timeout") or self.options.get("read_timeout") or 60.0))
        return SketchfabDownloader, urlsplit(endpoint).netloc

    def _object_paths(self, dl, host: str, base: Path) -> dict[str, str]:
        """uid -> path in allenai/objaverse; fetched once per cache dir, parsed once per process."""
        def load() -> dict[str, str]:
            with exclusive(base / "hf-objaverse-v1" / ".object-paths.lock"):
                return with_retries(lambda: dl._get_object_paths(download_dir=str(base)), "object-paths.json.gz",
                                    host, self.options)

        gz = base / "hf-objaverse-v1" / "object-paths.json.gz"
        if not gz.exists():
            load()
        return shared(("object-paths",) + file_key(gz), load)

    def fetch_with_info(self, asset: Mapping[str, Any], dest_dir: Path) -> tuple[Path, dict[str, Any]]:
        dl, host = self._setup()
        base = self.cache_dir / "objaverse"
        uid = asset.get("locator") or self.locator(asset["file_identifier"])
        paths = self._object_paths(dl, host, base)
        hf_path = paths.get(uid)
        if hf_path is None:
            raise NotFound(f"uid {uid} is not in objaverse object-paths (removed from allenai/objaverse?)")
        cached = base / "hf-objaverse-v1" / hf_path
        info: dict[str, Any] = {"local_path": f"raw/hf-objaverse-v1/{hf_path}", "cache_hit": cached.exists()}
        if not cached.exists():
            found: dict[str, Any] = {}

            def modified(**kw):
                found["modified"] = kw.get("new_sha256")

            def call():
                return dl._download_object(
                    file_identifier=asset["file_identifier"], hf_object_path=hf_path, download_dir=str(base),
                    expected_sha256=asset["sha256"], handle_found_object=None, handle_modified_object=modified)

            with exclusive(cached.with_name(cached.name + ".lock")):
                if not cached.exists():
                    with_retries(call, asset["file_identifier"], host, self.options)
        got = sha256_file(cached)
        if got != asset["sha256"]:
            cached.unlink(missing_ok=True)
            raise ChecksumMismatch(f"sha256 mismatch for {asset['file_identifier']}: listed {asset['sha256'][:12]}, got {got[:12]}")
        out = move_into(cached, dest_dir, f"{uid}.glb", keep=bool(self.options.get("keep_cache")))
        info["bytes"] = out.stat().st_size
        return out, info


# -- GitHub --------------------------------------------------------------------------------------
DEFAULT_ARCHIVE_URL = "https://codeload.github.com/{org}/{repo}/zip/{commit}"


def parse_github_identifier(fid: str) -> tuple[str, str, str, str]:
    """(org, repo, commit, path) of `https://github.com/<org>/<repo>/blob/<commit>/<path>`."""
    parts = urlsplit(fid)
    segs = parts.path.lstrip("/").split("/")
    if parts.netloc.lower() not in ("github.com", "www.github.com") or len(segs) < 5 or segs[2] != "blob":
        raise ValueError(f"not a GitHub blob identifier: {fid!r}")
    org, repo, _, commit = segs[:4]
    return org, repo, commit, "/".join(segs[4:])


class ObjaverseGithubSource(ListingSource):
    """Options: `archive_url` (template with {org} {repo} {commit}; default GitHub codeload),
    `github_token_env` (env var with a token for higher rate limits, default GITHUB_TOKEN),
    `max_archive_bytes` (default 4 GiB), `missing_ttl_s` (default 1 day), `package_side_files`
    (default True)."""

    name = "objaverse_github"
    needs = "nothing (public); GITHUB_TOKEN optional for higher rate limits; cache space for repository archives"

    PACKAGED = (".obj", ".gltf")
    """Formats whose side files (mtl, textures, buffers) travel with them in a package zip."""

    def _packaged(self, path: str) -> bool:
        return Path(path).suffix.lower() in self.PACKAGED and bool(self.options.get("package_side_files", True))

    def format_of(self, file_identifier: str) -> str | None:
        try:
            path = parse_github_identifier(file_identifier)[3]
        except ValueError:
            return None
        if self._packaged(path):
            return "zip"
        return Path(path).suffix.lower().lstrip(".") or None

    def local_path(self, file_identifier: str) -> str | None:
        try:
            org, repo, _commit, path = parse_github_identifier(file_identifier)
        except ValueError:
            return None
        return f"raw/github/repos/{org}/{repo}.zip/{path}"

    def make_record(self, core):
        rec = super().make_record(core)
        try:
            org, repo, commit, path = parse_github_identifier(rec.file_identifier)
            rec.extra.update({"repo": f"{org}/{repo}", "commit": commit, "path_in_repo": path})
            if self._packaged(path):
                rec.extra["package_entry"] = path
        except ValueError:
            pass
        return rec

    # -- the archive cache ----------------------------------------------------------------------
    def archive_path(self, org: str, repo: str, commit: str) -> Path:
        return self.cache_dir / "github" / org / repo / f"{commit}.zip"

    def repo_archive(self, org: str, repo: str, commit: str) -> tuple[Path, bool]:
        """The cached archive of (repo, commit), fetched once; returns (path, fetched_now)."""
        path = self.archive_path(org, repo, commit)
        missing = path.with_name(path.name + ".missing")
        ttl = float(self.options.get("missing_ttl_s", 86400))
        if path.exists():
            return path, False
        if missing.exists() and time.time() - missing.stat().st_mtime < ttl:
            raise NotFound(f"repository archive {org}/{repo}@{commit[:12]} was not found (remembered): {missing.read_text()[:200]}")
        with exclusive(path.with_name(path.name + ".lock")):
            if path.exists():  # another worker fetched it while we waited
                return path, False
            token = os.environ.get(self.options.get("github_token_env", "GITHUB_TOKEN"))
            opts = dict(self.options)
            opts.setdefault("max_bytes", self.options.get("max_archive_bytes", 4 << 30))
            dl = downloader_from_options(opts, token=token)
            url = (self.options.get("archive_url") or DEFAULT_ARCHIVE_URL).format(org=org, repo=repo, commit=commit)
            try:
                dl.fetch(url, path)
            except NotFound as exc:
                missing.write_text(str(exc))
                raise
            missing.unlink(missing_ok=True)
            return path, True

    # -- fetch --------------------------------------------------------------------------------------
    def fetch_with_info(self, asset: Mapping[str, Any], dest_dir: Path) -> tuple[Path, dict[str, Any]]:
        try:
            org, repo, commit, path = parse_github_identifier(asset["file_identifier"])
        except ValueError as exc:
            raise BadInput(str(exc)) from None
        archive, fetched = self.repo_archive(org, repo, commit)
        try:
            return self._from_archive(archive, fetched, asset, dest_dir, org, repo, commit, path)
        except (CorruptArchive, UnsupportedFormat):
            archive.unlink(missing_ok=True)  # a damaged download must not stay cached
            raise

    def _from_archive(self, archive: Path, fetched: bool, asset: Mapping[str, Any], dest_dir: Path,
                      org: str, repo: str, commit: str, path: str) -> tuple[Path, dict[str, Any]]:
        info: dict[str, Any] = {"local_path": self.local_path(asset["file_identifier"]),
                                "repo_archive": f"{org}/{repo}@{commit}", "archive_fetched": fetched,
                                "archive_bytes": archive.stat().st_size}
        with SafeArchive(archive) as a:
            names = a.names()
            root = common_root(names)
            pre = f"{root}/" if root else ""
            member = None
            for cand in (path, unquote(path)):
                if a.has(pre + cand):
                    member = cand
                    break
            if member is None:
                raise MemberNotFound(f"{path!r} is not in {org}/{repo}@{commit[:12]}")
            if self._packaged(member):
                deps = dependencies(member, lambda n: a.read(pre + n) if a.has(pre + n) else None)
                out = package_from_archive(a, member, dest_dir, root=root,
                                           manifest_extra={"source": self.name, "repo": f"{org}/{repo}", "commit": commit})
                info.update(packaged=True, side_files=len(deps), bytes=out.stat().st_size)
                return out, info
            tmp = Path(tempfile.mkdtemp(prefix=".x-", dir=dest_dir))
            try:
                written = a.extract(tmp, [pre + member], strip_prefix=root)
                out = move_into(written[0], dest_dir, Path(member).name)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        info.update(packaged=False, bytes=out.stat().st_size)
        return out, info


__all__ = ["ObjaverseSketchfabSource", "ObjaverseGithubSource", "parse_github_identifier", "UrllibRouter",
           "with_retries", "DEFAULT_ARCHIVE_URL"]
