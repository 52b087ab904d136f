"""The `local` source: every file of a folder of meshes (recursively), identity = file sha256.

Texture and material side files (.mtl, images, .bin buffers) are not assets of their own; every
other file is listed, so a stray non-mesh file is recorded as a typed failure rather than
silently ignored.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from curation.sources.base import AssetRecord, Source, sha256_file

SIDECAR_SUFFIXES = {".mtl", ".png", ".jpg", ".jpeg", ".bmp", ".tga", ".tif", ".tiff", ".webp", ".ktx2", ".bin", ".dds", ".exr", ".hdr"}


class LocalSource(Source):
    """Options: `path` (the folder)."""

    name = "local"

    @property
    def folder(self) -> Path:
        return Path(self.options["path"]).expanduser().resolve()

    def list_assets(self) -> Iterator[AssetRecord]:
        root = self.folder
        if not root.is_dir():
            raise FileNotFoundError(f"local source folder does not exist: {root}")
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() in SIDECAR_SUFFIXES:
                continue
            rel = path.relative_to(root).as_posix()
            yield AssetRecord(
                sha256=sha256_file(path),
                source=self.name,
                file_identifier=rel,
                locator=rel,
                format=path.suffix.lower().lstrip(".") or None,
                size_bytes=path.stat().st_size,
            )

    def fetch(self, asset: Mapping[str, Any], dest_dir: Path) -> Path:
        src = (self.folder / asset["locator"]).resolve()
        if self.folder not in src.parents:
            raise ValueError(f"locator escapes the source folder: {asset['locator']!r}")
        dest = Path(dest_dir) / src.name
        shutil.copyfile(src, dest)
        return dest
