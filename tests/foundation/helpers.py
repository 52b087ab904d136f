"""Small helpers shared by the foundation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.spec import PipelineSpec


def spec(stages: list[Any], sources: list[dict] | None = None, **execution) -> PipelineSpec:
    return PipelineSpec.from_dict({"name": "test", "sources": sources if sources is not None else [{"name": "sample"}],
                                   "stages": stages, "execution": {"flush_every": 5, "flush_s": 0.5, **execution}})


def write_spec(path: Path, s: PipelineSpec) -> Path:
    path.write_text(yaml.safe_dump(s.to_dict()))
    return path


THIN_SLICE = ["ingest", "normalize", {"name": "voxelize", "params": {"resolution": 64}}]
