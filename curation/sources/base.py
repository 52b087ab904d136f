"""What a source is: a metadata listing of assets, and a way to fetch one asset's file.

A source lists `AssetRecord`s (imported into the catalog's `assets` table by the driver) and
fetches a single asset into a local directory on a worker (the ingest stage then verifies it and
publishes it into the store). Identity is the sha256 the source's listing gives; `verify` checks a
fetched file against it.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from catalogs.stage import BadInput


class ChecksumMismatch(BadInput):
    error_type = "checksum_mismatch"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class AssetRecord:
    """One row of a source's listing, in the catalog's `assets` shape."""

    sha256: str
    source: str
    file_identifier: str
    locator: str
    """Where this source fetches the asset from (path, URL, archive member); opaque to others."""
    format: str | None = None
    size_bytes: int | None = None
    license: str | None = None
    captions: list[str] | None = None
    aesthetic_score: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        # Never store "[]": TRELLIS readers treat it as present and then fail (DATA_FORMATS §1.2).
        row["captions"] = json.dumps(self.captions) if self.captions else None
        row["extra"] = json.dumps(self.extra, sort_keys=True, default=str) if self.extra else None
        return row


class Source(ABC):
    """Base of every source. Options come from the pipeline spec and never enter fingerprints."""

    name: ClassVar[str]

    def __init__(self, **options: Any) -> None:
        self.options = options

    @abstractmethod
    def list_assets(self) -> Iterator[AssetRecord]:
        """The source's metadata listing."""

    @abstractmethod
    def fetch(self, asset: Mapping[str, Any], dest_dir: Path) -> Path:
        """Fetch one asset (a catalog `assets` row) into `dest_dir`; return the local file."""

    def verify(self, asset: Mapping[str, Any], path: Path) -> None:
        """Check the fetched file against the listed identity (sha256 of the file bytes)."""
        got = sha256_file(path)
        if got != asset["sha256"]:
            raise ChecksumMismatch(f"sha256 mismatch for {asset.get('file_identifier')}: listed {asset['sha256'][:12]}, got {got[:12]}")
