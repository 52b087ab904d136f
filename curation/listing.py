"""TRELLIS-500K metadata listings: where they are, how to read them, how a row becomes an AssetRecord.

Every source's listing has the official CSV shape (DATA_FORMATS §2): `sha256`, `file_identifier`,
`aesthetic_score`, `captions` (a JSON array of strings, empty when none) and any other columns,
which pass through into `extra` (a `license` column, where present, goes to `license`). The
location is an option: a local path, an http(s) URL (fetched with the careful downloader and cached)
or any fsspec URL, by default `hf://datasets/JeffreyXiang/TRELLIS-500K/<file>`. Nothing is fetched
at import time.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from curation.errors import redact

DEFAULT_LISTING_ROOT = "hf://datasets/JeffreyXiang/TRELLIS-500K"

LISTING_FILES: dict[str, str] = {
    "objaverse_sketchfab": "ObjaverseXL_sketchfab.csv",
    "objaverse_github": "ObjaverseXL_github.csv",
    "abo": "ABO.csv",
    "future3d": "3D-FUTURE.csv",
    "hssd": "HSSD.csv",
    "toys4k": "Toys4k.csv",
}

# DATA_FORMATS §2.1: per-source aesthetic thresholds of the TRELLIS-500K selection, and its sizes.
TRELLIS_500K_RULE: dict[str, dict[str, Any]] = {
    "objaverse_sketchfab": {"min_aesthetic": 5.5, "assets": 168_307, "with_captions": 167_638, "split": "train"},
    "objaverse_github": {"min_aesthetic": 5.5, "assets": 311_843, "with_captions": 306_790, "split": "train"},
    "abo": {"min_aesthetic": 4.5, "assets": 4_485, "with_captions": 4_390, "split": "train"},
    "future3d": {"min_aesthetic": 4.5, "assets": 9_472, "with_captions": 9_291, "split": "train"},
    "hssd": {"min_aesthetic": 4.5, "assets": 6_670, "with_captions": 6_661, "split": "train"},
    "toys4k": {"min_aesthetic": 4.5, "assets": 3_229, "with_captions": 3_180, "split": "eval"},
}

CORE_COLUMNS = ("sha256", "file_identifier", "aesthetic_score", "captions")


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRELLIS_DATA_CACHE", "~/.cache/trellis-data")).expanduser()


def default_location(source: str) -> str:
    return f"{DEFAULT_LISTING_ROOT}/{LISTING_FILES[source]}"


def local_listing(location: str, options: Mapping[str, Any] | None = None) -> Path | str:
    """A path pandas can read: local files as they are, http(s) URLs downloaded once into the cache;
    other fsspec URLs (hf://, s3://, memory://) are returned as they are."""
    options = options or {}
    loc = str(location)
    if loc.startswith(("http://", "https://")):
        from curation.http import downloader_from_options

        cache = Path(options.get("cache_dir") or default_cache_dir()) / "listings"
        name = Path(loc.split("?", 1)[0]).name or "listing.csv"
        dest = cache / f"{hashlib.sha256(loc.encode()).hexdigest()[:16]}-{name}"
        if dest.exists() and not options.get("refresh_listing"):
            return dest
        dest.unlink(missing_ok=True)
        downloader_from_options(options).fetch(loc, dest)
        return dest
    if "://" not in loc:
        p = Path(loc).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"listing not found: {p}")
        return p
    return loc


def read_listing(location: str, options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The listing as a DataFrame with string identity columns (nothing coerced to numbers)."""
    src = local_listing(location, options)
    name = str(src).lower()
    storage = {}
    if str(src).startswith("hf://"):
        token = os.environ.get((options or {}).get("token_env", "HF_TOKEN"))
        if token:
            storage["token"] = token
    try:
        if name.endswith(".parquet"):
            df = pd.read_parquet(src, storage_options=storage or None)
        else:
            df = pd.read_csv(src, dtype={"sha256": str, "file_identifier": str, "captions": str},
                             keep_default_na=True, storage_options=storage or None)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise RuntimeError(redact(f"cannot read listing {location}: {type(exc).__name__}: {exc}")) from None
    missing = [c for c in ("sha256", "file_identifier") if c not in df.columns]
    if missing:
        raise ValueError(f"listing {location} lacks columns {missing} (has {list(df.columns)})")
    return df


def _clean(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        try:
            return v.item()
        except (ValueError, AttributeError):
            pass
    return v


def parse_captions(value: Any) -> tuple[list[str] | None, str | None]:
    """(captions, raw-if-unparseable). Empty / '[]' / NaN -> None; never returns []."""
    value = _clean(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, None
    if isinstance(value, list):
        caps = [str(c) for c in value if str(c).strip()]
        return (caps or None), None
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return None, str(value)
    if isinstance(parsed, str):
        parsed = [parsed]
    if not isinstance(parsed, list):
        return None, str(value)
    caps = [str(c) for c in parsed if str(c).strip()]
    return (caps or None), None


def iter_rows(df: pd.DataFrame, limit: int | None = None) -> Iterator[dict[str, Any]]:
    cols = list(df.columns)
    for i, tup in enumerate(df.itertuples(index=False, name=None)):
        if limit is not None and i >= limit:
            return
        yield {c: _clean(v) for c, v in zip(cols, tup)}


def split_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Core fields of a listing row plus `extra` (all other non-empty columns, verbatim)."""
    sha = str(row["sha256"]).strip().lower()
    score = row.get("aesthetic_score")
    try:
        score = float(score) if score is not None else None
    except (TypeError, ValueError):
        score = None
    caps, raw_caps = parse_captions(row.get("captions"))
    extra = {k: v for k, v in row.items() if k not in CORE_COLUMNS and k != "license" and v is not None}
    if raw_caps is not None:
        extra["captions_unparsed"] = raw_caps
    lic = row.get("license")
    return {
        "sha256": sha,
        "file_identifier": str(row["file_identifier"]),
        "aesthetic_score": score,
        "captions": caps,
        "license": str(lic) if lic is not None else None,
        "extra": extra,
    }


__all__ = ["DEFAULT_LISTING_ROOT", "LISTING_FILES", "TRELLIS_500K_RULE", "read_listing", "split_row", "iter_rows",
           "parse_captions", "default_location", "default_cache_dir", "local_listing"]
