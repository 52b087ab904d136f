"""Pipeline specs (YAML in ray_configs/specs/): sources, selection, stages with params and config.

    name: demo
    sources: [{name: sample}]
    selection: all                       # or SQL yielding sha256 over the catalog
    stages:
      - {name: ingest}
      - {name: normalize}
      - {name: voxelize, params: {resolution: 64}}
    execution: {num_cpus: 2, flush_every: 500}

A stage entry may also give `use` (the registered class, default = name), `config` (run-time
settings that do not change outputs) and `upstream` (to rewire a class under another name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from catalogs.planner import PlannedStage, stage_order
from catalogs.stage import Stage
from pipeline.registry import stage_class


@dataclass
class StageEntry:
    name: str
    use: str
    params: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    upstream: list[str] | None = None

    def build(self) -> Stage:
        return stage_class(self.use)(self.params, self.config, name=self.name, upstream=self.upstream)


@dataclass
class PipelineSpec:
    name: str
    sources: list[dict[str, Any]]
    stages: list[StageEntry]
    selection: str | None = None
    execution: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineSpec:
        unknown = set(d) - {"name", "sources", "stages", "selection", "execution"}
        if unknown:
            raise ValueError(f"unknown spec keys {sorted(unknown)}")
        entries = []
        for e in d.get("stages") or []:
            e = {"name": e} if isinstance(e, str) else dict(e)
            bad = set(e) - {"name", "use", "params", "config", "upstream"}
            if bad:
                raise ValueError(f"stage {e.get('name')}: unknown keys {sorted(bad)}")
            entries.append(StageEntry(name=e["name"], use=e.get("use", e["name"]), params=dict(e.get("params") or {}),
                                      config=dict(e.get("config") or {}), upstream=e.get("upstream")))
        if not entries:
            raise ValueError("a spec needs at least one stage")
        sources = list(d.get("sources") or [])
        for e in entries:  # ingest fetches through the spec's sources (options never enter fingerprints)
            if e.use == "ingest":
                e.config.setdefault("sources", {s["name"]: dict(s.get("options") or {}) for s in sources})
        return cls(name=d.get("name", "pipeline"), sources=sources, stages=entries,
                   selection=d.get("selection"), execution=dict(d.get("execution") or {}))

    @classmethod
    def load(cls, path: str | Path) -> PipelineSpec:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "sources": self.sources, "selection": self.selection, "execution": self.execution,
            "stages": [{"name": e.name, "use": e.use, "params": e.params, "config": e.config, "upstream": e.upstream}
                       for e in self.stages],
        }

    def build_stages(self) -> list[Stage]:
        """Stage instances in topological order; every declared upstream must be in the spec."""
        built = {e.name: e.build() for e in self.stages}
        for s in built.values():
            missing = [u for u in s.upstream if u not in built]
            if missing:
                raise ValueError(f"stage {s.name} needs {missing}, which the spec does not include")
        order = stage_order({n: s.upstream for n, s in built.items()})
        return [built[n] for n in order]


def plan_stages(stages: list[Stage]) -> list[PlannedStage]:
    """Fingerprints of every stage in order (each includes its upstream fingerprints)."""
    fps: dict[str, str] = {}
    planned = []
    for s in stages:
        fps[s.name] = s.fingerprint(fps)
        planned.append(PlannedStage(s.name, s.variant, fps[s.name], s.max_attempts, tuple(s.upstream)))
    return planned
