"""The ingest stage: fetch one asset through its source, verify its identity, publish it to `raw/`."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from catalogs import layout
from catalogs.stage import AssetTask, EmptyFile, Resources, Stage, StageContext, StageResult


class IngestStage(Stage):
    """Config: `sources` = {source name: options}, filled from the spec's `sources`."""

    name = "ingest"
    resources = Resources(num_cpus=0.25)
    timeout_s = 3600.0

    @dataclass(frozen=True)
    class Params:
        verify: bool = True

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        from curation.sources import get_source

        asset = task.asset
        source = get_source(asset["source"], **dict(self.config.get("sources", {}).get(asset["source"]) or {}))
        with tempfile.TemporaryDirectory(prefix="trellis-ingest-") as d:
            path = Path(source.fetch(asset, Path(d)))
            size = path.stat().st_size
            if size == 0:
                raise EmptyFile(f"{asset.get('file_identifier')}: file is empty")
            if self.params.verify:
                source.verify(asset, path)
            ext = (asset.get("format") or path.suffix.lstrip(".") or "bin").lower()
            rel = layout.raw(asset["source"], task.sha256, ext)
            n = ctx.store.put_file(path, rel)
        return StageResult(uri=ctx.store.uri(rel), bytes=n,
                           metrics={"local_path": rel, "size_bytes": n, "format": ext, "sha256": task.sha256})
