from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from catalogs.stage import classify
from curation.errors import (
    AuthRequired,
    ConnectionFailed,
    DownloadTimeout,
    HttpError,
    NotFound,
    RateLimited,
    TooLarge,
    redact,
    register_secret,
)
from curation.http import Downloader, RateLimiter, RetryPolicy, parse_retry_after
from curation.sources.base import ChecksumMismatch

BODY = os.urandom(300_000)
SHA = hashlib.sha256(BODY).hexdigest()


def make(**pol) -> tuple[Downloader, list[float]]:
    slept: list[float] = []
    policy = RetryPolicy(**{"connect_timeout": 2, "read_timeout": 1.0, "max_attempts": 3, "backoff_base": 0.01,
                            "backoff_cap": 0.05, **pol})
    d = Downloader(policy=policy, limiter=RateLimiter(), sleep=lambda s: (slept.append(s), time.sleep(min(s, 0.05))))
    return d, slept


def test_ok_verified_and_never_fetched_again(server, tmp_path):
    url = server.add("/a.bin", BODY)
    d, _ = make()
    r = d.fetch(url, tmp_path / "a.bin", sha256=SHA, size=len(BODY))
    assert r.fetched and r.sha256 == SHA and (tmp_path / "a.bin").read_bytes() == BODY
    assert not (tmp_path / "a.bin.part").exists()
    r2 = d.fetch(url, tmp_path / "a.bin", sha256=SHA)
    assert not r2.fetched
    assert len(server.requests("/a.bin")) == 1


def test_sha_mismatch(server, tmp_path):
    url = server.add("/a.bin", BODY)
    d, _ = make()
    with pytest.raises(ChecksumMismatch) as ei:
        d.fetch(url, tmp_path / "a.bin", sha256="0" * 64)
    assert classify(ei.value) == ("checksum_mismatch", False)
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()


def test_404_not_retried(server, tmp_path):
    d, slept = make()
    with pytest.raises(NotFound) as ei:
        d.fetch(server.url("/missing"), tmp_path / "x")
    assert ei.value.error_type == "not_found" and not ei.value.retryable
    assert len(server.requests("/missing")) == 1 and not slept


def test_403_auth(server, tmp_path):
    url = server.script("/gated", [403])
    d, _ = make()
    with pytest.raises(AuthRequired):
        d.fetch(url, tmp_path / "x")


def test_429_then_200_honours_retry_after(server, tmp_path):
    url = server.script("/r", [429, 429], body=BODY, headers={"Retry-After": "0.2"})
    d, slept = make()
    r = d.fetch(url, tmp_path / "r", sha256=SHA)
    assert r.attempts == 3
    assert slept == [0.2, 0.2]


def test_429_retry_after_too_long_is_rate_limited(server, tmp_path):
    url = server.script("/r", [429], body=BODY, headers={"Retry-After": "3600"})
    d, _ = make()
    with pytest.raises(RateLimited) as ei:
        d.fetch(url, tmp_path / "r")
    assert ei.value.retryable and ei.value.retry_after == 3600
    assert classify(ei.value) == ("rate_limited", True)


def test_500_retried_then_http_error(server, tmp_path):
    url = server.script("/e", [500, 503, 502], body=BODY)
    d, slept = make()
    with pytest.raises(HttpError) as ei:
        d.fetch(url, tmp_path / "e")
    assert ei.value.status == 502 and ei.value.retryable and ei.value.error_type == "http_error"
    assert len(slept) == 2 and all(0 <= s <= 0.05 for s in slept)
    # a transient 500 followed by success
    url = server.script("/e2", [500], body=BODY)
    assert d.fetch(url, tmp_path / "e2", sha256=SHA).attempts == 2


def test_stalled_connection_is_timeout_and_resumes(server, tmp_path):
    url = server.script("/s", ["stall", "stall"], body=BODY, stall_s=3)
    d, _ = make(max_attempts=2, read_timeout=0.5)
    t = time.monotonic()
    with pytest.raises(DownloadTimeout) as ei:
        d.fetch(url, tmp_path / "s", sha256=SHA)
    assert time.monotonic() - t < 3
    assert classify(ei.value) == ("timeout", True)
    # the bytes received so far were kept; the next call resumes with Range
    assert (tmp_path / "s.part").stat().st_size > 0
    r = d.fetch(url, tmp_path / "s", sha256=SHA)
    assert r.resumed_from > 0
    assert server.requests("/s")[-1]["headers"].get("Range", "").startswith("bytes=")


def test_stalled_before_headers_is_timeout(server, tmp_path):
    url = server.script("/h", ["stall_headers"], body=BODY, stall_s=3)
    d, _ = make(max_attempts=1, read_timeout=0.5)
    with pytest.raises(DownloadTimeout):
        d.fetch(url, tmp_path / "h")


def test_slow_server_attempt_deadline_then_resume(server, tmp_path):
    body = BODY[:6000]
    url = server.add("/slow", body, slow_bps=10_000)  # ~0.6 s for the whole body
    d, _ = make(attempt_deadline=0.25, max_attempts=1)
    with pytest.raises(DownloadTimeout) as ei:
        d.fetch(url, tmp_path / "slow")
    assert "deadline" in str(ei.value)
    # with retries, each attempt resumes where the last one stopped and the download completes
    d2, _ = make(attempt_deadline=0.25, max_attempts=10)
    r = d2.fetch(url, tmp_path / "slow", sha256=hashlib.sha256(body).hexdigest())
    assert r.fetched and (tmp_path / "slow").read_bytes() == body


def test_dropped_connection_resumes(server, tmp_path):
    url = server.script("/d", ["drop"], body=BODY)
    d, _ = make()
    r = d.fetch(url, tmp_path / "d", sha256=SHA)
    assert r.attempts == 2
    assert server.requests("/d")[1]["headers"]["Range"] == f"bytes={len(BODY) // 2}-"


def test_server_without_range_restarts(server, tmp_path):
    url = server.add("/nr", BODY, ranges=False)
    (tmp_path / "nr.part").write_bytes(b"garbage")
    d, _ = make()
    assert d.fetch(url, tmp_path / "nr", sha256=SHA).fetched


def test_too_large(server, tmp_path):
    url = server.add("/big", BODY)
    d, _ = make(max_bytes=1000)
    with pytest.raises(TooLarge) as ei:
        d.fetch(url, tmp_path / "big")
    assert ei.value.error_type == "too_large"
    assert not (tmp_path / "big.part").exists()


def test_connection_refused(tmp_path):
    d, _ = make(max_attempts=2)
    with pytest.raises(ConnectionFailed):
        d.fetch("http://127.0.0.1:9/x", tmp_path / "x")


def test_rate_limit_token_bucket_threadsafe(server, tmp_path):
    url = server.add("/t", b"x")
    lim = RateLimiter(rate=10.0, burst=1)
    d = Downloader(policy=RetryPolicy(), limiter=lim)
    t0 = time.monotonic()
    threads = [threading.Thread(target=d.fetch, args=(url, tmp_path / f"t{i}")) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    times = sorted(r["t"] for r in server.requests("/t"))
    assert len(times) == 6
    # 6 requests at 10/s with a burst of 1: at least 0.5 s between the first and the last
    assert times[-1] - times[0] >= 0.45
    assert time.monotonic() - t0 >= 0.45


def test_rate_limit_unit():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        lim.acquire("h")
    assert sum(slept) == pytest.approx(1.0)  # two free (burst), then 0.5 s each
    assert lim.acquire("other") == 0.0


def test_retry_after_parsing():
    assert parse_retry_after("5") == 5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 10) == pytest.approx(10)
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_redaction_everywhere(server, tmp_path, monkeypatch, caplog):
    token = "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmN"
    monkeypatch.setenv("HF_TOKEN", token)
    register_secret("s3cr3t-value-xyz")
    assert token not in redact(f"Authorization: Bearer {token}")
    assert "s3cr3t-value-xyz" not in redact("got s3cr3t-value-xyz back")
    assert redact("https://user:pw@host/x?token=abc&y=1") == "https://***:***@host/x?token=***&y=1"
    url = server.script("/x", [500, 500, 500])
    d = Downloader(policy=RetryPolicy(max_attempts=2, backoff_base=0.01), limiter=RateLimiter(),
                   headers={"Authorization": f"Bearer {token}"})
    import logging
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HttpError) as ei:
        d.fetch(server.url(f"/x?token={token}"), tmp_path / "x")
    assert token not in str(ei.value)
    assert token not in caplog.text
    assert server.requests("/x")[0]["headers"]["Authorization"] == f"Bearer {token}"  # sent, never shown
    _ = url
