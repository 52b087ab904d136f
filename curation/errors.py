"""Typed failures of downloads, archives and sources, plus `redact()` for secrets.

Every error here is a `StageError`, so the executor records its `error_type` per asset and retries
only the retryable ones. Messages and tool logs are passed through `redact()` on construction, so a
token can never reach the catalog through an exception text.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable
from typing import ClassVar

from catalogs.stage import BadInput, StageError
from catalogs.stage import UnsupportedFormat as _StageUnsupportedFormat

# -- redaction ---------------------------------------------------------------------------------
_SECRET_ENV = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|AUTH)", re.I)
_MIN_SECRET_LEN = 6
_registered: set[str] = set()
_reg_lock = threading.Lock()

_PATTERNS = [
    # Hugging Face user / org tokens
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}\b"), "hf_***"),
    # GitHub tokens
    (re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})\b"), "gh_***"),
    # Authorization headers, in any rendering (dict repr, raw header line)
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?\s*(?:bearer|token|basic)?\s*)[^\s'\",}]+"), r"\1***"),
    # credentials in URLs: scheme://user:pass@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s:@]+:[^/\s@]+@"), r"\1***:***@"),
    # secrets in query strings
    (re.compile(r"(?i)([?&](?:token|access_token|api_key|apikey|key|signature|sig|x-amz-signature|x-amz-security-token|x-amz-credential)=)[^&\s'\"]+"), r"\1***"),
]


def register_secret(value: str | None) -> None:
    """Remember a secret value (e.g. a token read from a file) so `redact` removes it everywhere."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _reg_lock:
            _registered.add(value)


def _secret_values(extra: Iterable[str] | None) -> list[str]:
    vals = set(_registered)
    for k, v in os.environ.items():
        if v and len(v) >= _MIN_SECRET_LEN and _SECRET_ENV.search(k):
            vals.add(v)
    if extra:
        vals.update(s for s in extra if s and len(s) >= _MIN_SECRET_LEN)
    # Longest first, so a secret containing another is removed whole.
    return sorted(vals, key=len, reverse=True)


def redact(text: object, secrets: Iterable[str] | None = None) -> str:
    """`text` with every known secret (env tokens, registered values, `secrets`) and every
    token-shaped substring (hf_..., ghp_..., Authorization values, URL credentials, signed query
    parameters) replaced by `***`."""
    if text is None:
        return ""
    s = str(text)
    for v in _secret_values(secrets):
        if v in s:
            s = s.replace(v, "***")
    for pat, repl in _PATTERNS:
        s = pat.sub(repl, s)
    return s


class RedactingFilter(logging.Filter):
    """A logging filter that rewrites each record's message through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is passed on untouched
            return True
        red = redact(msg)
        if red != msg:
            record.msg, record.args = red, ()
        return True


_FILTER = RedactingFilter()
# Third-party loggers that print URLs or headers at DEBUG (urllib3 logs every request line).
THIRD_PARTY_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "requests", "httpx", "httpcore",
                       "huggingface_hub", "huggingface_hub.file_download", "huggingface_hub.utils._http",
                       "objaverse", "trellis_data")


def install_log_redaction() -> None:
    """Attach the redacting filter to the loggers that may print URLs, and to every handler of the
    root logger (handler filters see records of every logger). Idempotent."""
    for name in THIRD_PARTY_LOGGERS:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)
    for h in logging.getLogger().handlers:
        if _FILTER not in h.filters:
            h.addFilter(_FILTER)


# -- errors ------------------------------------------------------------------------------------
class _Redacted:
    """Mixin: redact message and log text on construction."""

    def __init__(self, message: str, *, log_text: str | None = None, **kw) -> None:
        super().__init__(redact(message), log_text=redact(log_text) if log_text else None)  # type: ignore[call-arg]
        for k, v in kw.items():
            setattr(self, k, v)


class DownloadError(_Redacted, StageError):
    """Base of network failures; `status` is the HTTP status where there was one."""

    error_type: ClassVar[str] = "http_error"
    status: int | None = None
    url: str | None = None


class HttpError(DownloadError):
    """An HTTP status we do not retry (4xx other than 404/408/429), or 5xx after the last retry."""

    error_type = "http_error"

    def __init__(self, message: str, *, status: int | None = None, **kw) -> None:
        super().__init__(message, status=status, **kw)
        # 5xx are worth another attempt later; other statuses are not.
        self.retryable = bool(status and status >= 500)


class NotFound(DownloadError):
    error_type = "not_found"


class AuthRequired(DownloadError):
    """401/403, or a gated repository whose terms were not accepted / no token given."""

    error_type = "auth_required"


class RateLimited(DownloadError):
    error_type = "rate_limited"
    retryable = True
    retry_after: float | None = None


class DownloadTimeout(DownloadError):
    """Connect or read timeout (a stalled connection), or the per-attempt deadline passed."""

    error_type = "timeout"
    retryable = True


class ConnectionFailed(DownloadError):
    error_type = "connection_error"
    retryable = True


class TooLarge(_Redacted, BadInput):
    error_type = "too_large"


class UnsafeArchive(_Redacted, BadInput):
    error_type = "unsafe_archive"


class CorruptArchive(_Redacted, BadInput):
    error_type = "corrupt_archive"


class UnsupportedFormat(_Redacted, _StageUnsupportedFormat):
    error_type = "unsupported_format"


class MissingArchive(_Redacted, StageError):
    """A manually provided archive (3D-FUTURE, Toys4k, ABO tar) is not where the options say."""

    error_type = "missing_archive"


class MemberNotFound(_Redacted, BadInput):
    """The listed file is not in the (repository) archive."""

    error_type = "not_found"


__all__ = [
    "redact", "install_log_redaction", "RedactingFilter", "register_secret", "DownloadError", "HttpError", "NotFound", "AuthRequired", "RateLimited",
    "DownloadTimeout", "ConnectionFailed", "TooLarge", "UnsafeArchive", "CorruptArchive", "UnsupportedFormat",
    "MissingArchive", "MemberNotFound",
]
# ChecksumMismatch lives in curation.sources.base (error_type "checksum_mismatch").
