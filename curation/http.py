"""A careful HTTP downloader over `requests`.

- streams into `<dest>.part`, then renames atomically onto `<dest>`; a reader never sees a partial file;
- verifies sha256 (and the expected size) before the rename; a verified file is never fetched again;
- resumes a `.part` with a `Range` request where the server supports it (206), restarts otherwise;
- retries timeouts, 429 (honouring `Retry-After`), 5xx and dropped connections with capped
  exponential backoff and full jitter; everything else fails at once with a typed error;
- a thread-safe per-host token-bucket rate limit;
- connect and read timeouts (a stalled connection is a timeout) and an optional per-attempt deadline
  (a server that trickles bytes forever is a timeout too);
- a maximum size (`too_large`), checked on Content-Length and again while streaming;
- tokens never appear in logs, errors or records (`redact`).
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from curation.errors import (
    AuthRequired,
    ConnectionFailed,
    DownloadError,
    DownloadTimeout,
    HttpError,
    NotFound,
    RateLimited,
    TooLarge,
    install_log_redaction,
    redact,
)

log = logging.getLogger("trellis_data.curation.http")

PART_SUFFIX = ".part"


def _log(level: int, msg: str) -> None:
    if log.isEnabledFor(level):
        log.log(level, redact(msg))


# -- rate limit --------------------------------------------------------------------------------
class RateLimiter:
    """Token bucket per host: `rate` requests per second on average, bursts up to `burst`.

    Thread-safe; one instance is shared by every download of a process (see `default_limiter`).
    `per_host` overrides the rate for named hosts. A rate of 0 or None means unlimited.
    """

    def __init__(self, rate: float | None = None, burst: float | None = None,
                 per_host: Mapping[str, float] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self.burst = burst
        self.per_host = dict(per_host or {})
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._buckets: dict[str, list[float]] = {}  # host -> [tokens, last refill time]

    def configure(self, host: str, rate: float | None) -> None:
        with self._lock:
            self.per_host[host] = rate  # type: ignore[assignment]
            self._buckets.pop(host, None)

    def _rate(self, host: str) -> float | None:
        return self.per_host.get(host, self.rate)

    def acquire(self, host: str) -> float:
        """Block until a request to `host` may start; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                rate = self._rate(host)
                if not rate:
                    return waited
                cap = max(1.0, self.burst if self.burst is not None else rate)
                now = self._clock()
                tokens, last = self._buckets.get(host, [cap, now])
                tokens = min(cap, tokens + (now - last) * rate)
                if tokens >= 1.0:
                    self._buckets[host] = [tokens - 1.0, now]
                    return waited
                self._buckets[host] = [tokens, now]
                wait = (1.0 - tokens) / rate
            self._sleep(wait)
            waited += wait


_default_limiter = RateLimiter()


def default_limiter() -> RateLimiter:
    return _default_limiter


# -- policy ------------------------------------------------------------------------------------
@dataclass
class RetryPolicy:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    """Longest silence between two received chunks; longer is a stalled connection."""
    attempt_deadline: float | None = None
    """Longest one attempt may take in total (slow trickle); None = unlimited."""
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_retry_after: float = 120.0
    """A Retry-After longer than this is not waited out: `rate_limited` goes back to the executor."""
    max_bytes: int | None = None
    chunk_size: int = 1 << 20

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**attempt))."""
        return rng.uniform(0.0, min(self.backoff_cap, self.backoff_base * (2 ** attempt)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if dt is None:
        return None
    return max(0.0, dt.timestamp() - (now if now is not None else time.time()))


@dataclass
class DownloadResult:
    path: Path
    sha256: str
    bytes: int
    fetched: bool
    """False when a verified file was already there (nothing was fetched)."""
    attempts: int = 0
    resumed_from: int = 0
    waited_s: float = 0.0
    url: str = ""

    def metrics(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "fetched": self.fetched, "attempts": self.attempts,
                "resumed_from": self.resumed_from, "waited_s": round(self.waited_s, 3), "url": redact(self.url)}


@dataclass
class Downloader:
    """Downloads URLs to files. `headers` are sent with every request (e.g. Authorization); their
    values are treated as secrets for redaction."""

    policy: RetryPolicy = field(default_factory=RetryPolicy)
    limiter: RateLimiter = field(default_factory=default_limiter)
    headers: dict[str, str] = field(default_factory=dict)
    session: requests.Session | None = None
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        install_log_redaction()
        if self.session is None:
            self.session = requests.Session()
            self.session.headers["User-Agent"] = "trellis-data/0.1 (+curation)"
        self._secrets = [v.split(" ", 1)[-1] for v in self.headers.values() if v]

    def _redact(self, text: object) -> str:
        return redact(text, self._secrets)

    # ------------------------------------------------------------------------------------------
    def fetch(self, url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
              headers: Mapping[str, str] | None = None, max_bytes: int | None = None) -> DownloadResult:
        """Fetch `url` into `dest` (atomic), verified against `sha256`/`size` when given."""
        # imported here: curation.sources imports this module (no import cycle at load time)
        from curation.sources.base import ChecksumMismatch, sha256_file

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + PART_SUFFIX)
        limit = max_bytes if max_bytes is not None else self.policy.max_bytes

        if dest.exists():
            got = sha256_file(dest)
            if sha256 is None or got == sha256:
                return DownloadResult(dest, got, dest.stat().st_size, fetched=False, url=url)
            _log(logging.WARNING, f"{dest.name}: existing file does not match sha256, fetching again")
            dest.unlink()

        host = urlsplit(url).netloc
        rng = self.rng
        attempts = 0
        waited = 0.0
        resumed_from = part.stat().st_size if part.exists() else 0
        last_exc: DownloadError | None = None
        while attempts < self.policy.max_attempts:
            attempts += 1
            waited += self.limiter.acquire(host)
            try:
                self._attempt(url, part, headers, limit)
                break
            except DownloadError as exc:
                last_exc = exc
                if not exc.retryable or attempts >= self.policy.max_attempts:
                    raise
                if isinstance(exc, RateLimited) and exc.retry_after is not None:
                    if exc.retry_after > self.policy.max_retry_after:
                        raise
                    delay = exc.retry_after
                else:
                    delay = self.policy.backoff(attempts - 1, rng)
                _log(logging.INFO, f"retry {attempts}/{self.policy.max_attempts} of {url} in {delay:.2f}s: {exc}")
                self.sleep(delay)
                waited += delay
        else:  # pragma: no cover - loop always breaks or raises
            raise last_exc or DownloadError(f"gave up on {url}")

        n = part.stat().st_size
        if size is not None and n != size:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(self._redact(f"size mismatch for {url}: expected {size} bytes, got {n}"))
        got = sha256_file(part)
        if sha256 is not None and got != sha256:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(self._redact(f"sha256 mismatch for {url}: expected {sha256[:12]}, got {got[:12]}"))
        os.replace(part, dest)
        return DownloadResult(dest, got, n, fetched=True, attempts=attempts, resumed_from=resumed_from,
                              waited_s=waited, url=url)

    # ------------------------------------------------------------------------------------------
    def _attempt(self, url: str, part: Path, extra_headers: Mapping[str, str] | None, limit: int | None) -> None:
        have = part.stat().st_size if part.exists() else 0
        hdrs = {**self.headers, **(extra_headers or {})}
        if have:
            hdrs["Range"] = f"bytes={have}-"
        p = self.policy
        started = time.monotonic()
        try:
            resp = self.session.get(url, headers=hdrs, stream=True, timeout=(p.connect_timeout, p.read_timeout),
                                    allow_redirects=True)
        except requests.exceptions.ConnectTimeout as exc:
            raise DownloadTimeout(self._redact(f"connect timeout for {url}: {exc}"), url=url) from None
        except requests.exceptions.ReadTimeout as exc:
            raise DownloadTimeout(self._redact(f"read timeout for {url}: {exc}"), url=url) from None
        except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise ConnectionFailed(self._redact(f"connection failed for {url}: {exc}"), url=url) from None
        except requests.exceptions.RequestException as exc:
            raise DownloadError(self._redact(f"request failed for {url}: {exc}"), url=url) from None

        with resp:
            status = resp.status_code
            if status == 416 and have:
                # Range not satisfiable: the part is either complete or garbage; start over.
                part.unlink(missing_ok=True)
                raise ConnectionFailed(f"range {have}- not satisfiable for {url}; restarting", url=url)
            self._raise_for_status(resp, url)
            mode = "wb"
            if have and status == 206:
                start = _content_range_start(resp.headers.get("Content-Range"))
                if start == have:
                    mode = "ab"
                else:
                    have = 0
            else:
                have = 0  # server ignored the Range: restart from zero
            total = _expected_total(resp, have)
            if limit is not None and total is not None and total > limit:
                part.unlink(missing_ok=True)
                raise TooLarge(self._redact(f"{url} is {total} bytes, over the limit of {limit}"))
            written = have
            try:
                with open(part, mode) as f:
                    for chunk in _chunks(resp, p.chunk_size):
                        written += len(chunk)
                        if limit is not None and written > limit:
                            f.close()
                            part.unlink(missing_ok=True)
                            raise TooLarge(self._redact(f"{url} exceeded the limit of {limit} bytes while streaming"))
                        f.write(chunk)
                        if p.attempt_deadline is not None and time.monotonic() - started > p.attempt_deadline:
                            raise DownloadTimeout(self._redact(
                                f"{url}: attempt deadline of {p.attempt_deadline}s passed after {written} bytes"), url=url)
            except requests.exceptions.ConnectionError as exc:
                # requests wraps a read timeout while streaming into ConnectionError.
                inner = exc.args[0] if exc.args else None
                if isinstance(inner, ReadTimeoutError) or "timed out" in str(exc).lower():
                    raise DownloadTimeout(self._redact(f"read timeout (stalled) for {url} after {written} bytes"), url=url) from None
                raise ConnectionFailed(self._redact(f"connection dropped for {url} after {written} bytes: {exc}"), url=url) from None
            except ReadTimeoutError:
                raise DownloadTimeout(self._redact(f"read timeout (stalled) for {url} after {written} bytes"), url=url) from None
            except (requests.exceptions.ChunkedEncodingError, ProtocolError) as exc:
                raise ConnectionFailed(self._redact(f"connection dropped for {url} after {written} bytes: {exc}"), url=url) from None
            if total is not None and written < total:
                raise ConnectionFailed(f"{url}: connection closed after {written} of {total} bytes", url=url)

    def _raise_for_status(self, resp: requests.Response, url: str) -> None:
        status = resp.status_code
        if status < 400:
            return
        if status == 404 or status == 410:
            raise NotFound(self._redact(f"{status} not found: {url}"), status=status, url=url)
        if status in (401, 403):
            raise AuthRequired(self._redact(f"{status} access denied: {url} (token missing, invalid, or terms not accepted)"),
                               status=status, url=url)
        if status == 429:
            ra = parse_retry_after(resp.headers.get("Retry-After"))
            raise RateLimited(self._redact(f"429 rate limited: {url}" + (f" (Retry-After {ra:.0f}s)" if ra is not None else "")),
                              status=status, url=url, retry_after=ra)
        if status == 408:
            raise DownloadTimeout(self._redact(f"408 request timeout: {url}"), status=status, url=url)
        raise HttpError(self._redact(f"HTTP {status} for {url}"), status=status, url=url)


def _chunks(resp: requests.Response, size: int) -> Iterator[bytes]:
    """Whatever bytes arrived, as soon as they arrive (so a stall keeps what came before it)."""
    raw = resp.raw
    if hasattr(raw, "read1"):
        while True:
            chunk = raw.read1(size, decode_content=True)
            if not chunk:
                return
            yield chunk
    else:  # pragma: no cover - older urllib3
        yield from (c for c in resp.iter_content(chunk_size=size) if c)


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _expected_total(resp: requests.Response, have: int) -> int | None:
    cl = resp.headers.get("Content-Length")
    if cl is None or resp.headers.get("Content-Encoding") not in (None, "identity"):
        return None
    try:
        return have + int(cl)
    except ValueError:
        return None


def downloader_from_options(options: Mapping[str, Any], *, token: str | None = None) -> Downloader:
    """A Downloader configured from a source's options (`timeouts`, `retries`, `rate_limit`, `max_bytes`)."""
    pol = RetryPolicy()
    for key in ("connect_timeout", "read_timeout", "attempt_deadline", "max_attempts", "backoff_base",
                "backoff_cap", "max_retry_after", "max_bytes"):
        if key in options and options[key] is not None:
            setattr(pol, key, options[key])
    limiter = options.get("limiter") or default_limiter()
    rate = options.get("rate_limit")
    if isinstance(rate, Mapping):
        for host, r in rate.items():
            limiter.configure(host, r)
    elif rate:
        limiter.rate = float(rate)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    d = Downloader(policy=pol, limiter=limiter, headers=headers)
    if "sleep" in options:
        d.sleep = options["sleep"]
    return d


__all__ = ["Downloader", "DownloadResult", "RetryPolicy", "RateLimiter", "default_limiter", "parse_retry_after",
           "downloader_from_options", "PART_SUFFIX"]
