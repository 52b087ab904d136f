"""HSSD (`hssd`): `.glb` files of the gated Hugging Face dataset repo `hssd/hssd-models`.

Downloads go through `huggingface_hub.hf_hub_download(repo_type="dataset", local_dir=<cache>)`.
The token is read from the environment variable named by `token_env` (default `HF_TOKEN`) at fetch
time, registered with `redact()` and passed to the hub client; it is never logged, put in an error
text or stored in options, records or the catalog. `endpoint` (default: the hub client's own, i.e.
`HF_ENDPOINT` or https://huggingface.co) points the client at a mirror or a loopback test server.
The user must accept the dataset's terms on its Hugging Face page first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from curation.errors import AuthRequired, ConnectionFailed, DownloadTimeout, HttpError, NotFound, RateLimited, register_secret
from curation.extract import check_name
from curation.http import parse_retry_after
from curation.sources.objaverse_xl import with_retries
from curation.sources.trellis500k import ListingSource, exclusive, move_into

HSSD_REPO = "hssd/hssd-models"
TERMS = "https://huggingface.co/datasets/hssd/hssd-models"


class HssdSource(ListingSource):
    """Options: `repo_id` (default hssd/hssd-models), `revision` (default main), `endpoint`,
    `token_env` (default HF_TOKEN), `etag_timeout` (s, default 10), `keep_cache`."""

    name = "hssd"
    needs = f"a Hugging Face token in $HF_TOKEN of an account that accepted the terms at {TERMS}"

    def format_of(self, file_identifier: str) -> str | None:
        return Path(file_identifier).suffix.lower().lstrip(".") or "glb"

    def local_path(self, file_identifier: str) -> str | None:
        return f"raw/{file_identifier}"

    def _token(self) -> str | None:
        tok = os.environ.get(self.options.get("token_env", "HF_TOKEN")) or None
        register_secret(tok)
        return tok

    def fetch_with_info(self, asset: Mapping[str, Any], dest_dir: Path) -> tuple[Path, dict[str, Any]]:
        from huggingface_hub import hf_hub_download

        fid = check_name(asset["file_identifier"])
        repo = self.options.get("repo_id", HSSD_REPO)
        endpoint = self.options.get("endpoint")
        host = urlsplit(endpoint).netloc if endpoint else "huggingface.co"
        local_dir = self.cache_dir / "hssd" / repo.replace("/", "__")
        token = self._token()

        def call() -> str:
            try:
                return hf_hub_download(
                    repo_id=repo, filename=fid, repo_type="dataset", revision=self.options.get("revision", "main"),
                    local_dir=str(local_dir), token=token or None, endpoint=endpoint,
                    etag_timeout=float(self.options.get("etag_timeout", 10)))
            except Exception as exc:  # noqa: BLE001 - mapped to typed errors
                raise _map_hub_error(exc, fid) from None

        target = local_dir / fid
        with exclusive(local_dir / ".locks" / (fid.replace("/", "__") + ".lock")):
            path = Path(with_retries(call, f"{repo}/{fid}", host, self.options))
        info: dict[str, Any] = {"local_path": self.local_path(fid), "bytes": path.stat().st_size}
        out = move_into(path, dest_dir, Path(fid).name, keep=bool(self.options.get("keep_cache")))
        if out != target and not self.options.get("keep_cache"):
            # hf metadata for a moved file would claim it is still there; drop it so a rerun refetches
            meta = local_dir / ".cache" / "huggingface" / "download" / (fid + ".metadata")
            meta.unlink(missing_ok=True)
        return out, info


def _map_hub_error(exc: BaseException, fid: str, depth: int = 0) -> BaseException:
    """huggingface_hub / httpx exceptions -> our typed errors (never including headers)."""
    try:
        from huggingface_hub import errors as hub_errors
    except ImportError:  # pragma: no cover
        return exc
    name = type(exc).__name__
    if isinstance(exc, hub_errors.GatedRepoError):
        return AuthRequired(f"{HSSD_REPO} is gated: accept the terms at {TERMS} and set HF_TOKEN ({fid})", status=403)
    if isinstance(exc, hub_errors.RepositoryNotFoundError):
        return AuthRequired(f"{HSSD_REPO} not found or not accessible with this token (accept the terms at {TERMS}; set HF_TOKEN)", status=401)
    if isinstance(exc, hub_errors.LocalEntryNotFoundError):
        # "could not reach the hub and no local copy": the cause says why
        cause = exc.__cause__ or exc.__context__
        if cause is not None and depth < 5:
            mapped = _map_hub_error(cause, fid, depth + 1)
            if mapped is not cause:
                return mapped
        return ConnectionFailed(f"cannot reach the hub for {fid}: {name}")
    if isinstance(exc, hub_errors.HfHubHTTPError):
        resp = getattr(exc, "response", None)
        status = getattr(resp, "status_code", None)
        if status == 429:
            ra = parse_retry_after(resp.headers.get("Retry-After")) if resp is not None else None
            return RateLimited(f"429 from the hub for {fid}", status=429, retry_after=ra)
        if status in (401, 403):
            return AuthRequired(f"{status} from the hub for {fid}: token missing or terms not accepted ({TERMS})", status=status)
        if status in (404, 410) or isinstance(exc, hub_errors.EntryNotFoundError):
            return NotFound(f"{fid} is not in {HSSD_REPO}", status=404)
        return HttpError(f"HTTP {status} from the hub for {fid}", status=status)
    if isinstance(exc, hub_errors.EntryNotFoundError):
        return NotFound(f"{fid} is not in {HSSD_REPO}", status=404)
    if "Timeout" in name or isinstance(exc, TimeoutError):
        return DownloadTimeout(f"timeout fetching {fid} from the hub: {name}")
    if "Connect" in name or "Network" in name or isinstance(exc, ConnectionError):
        return ConnectionFailed(f"cannot reach the hub for {fid}: {name}")
    return exc


__all__ = ["HssdSource", "HSSD_REPO"]
