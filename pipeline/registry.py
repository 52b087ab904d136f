"""Stage registry: spec names -> stage classes, imported lazily so that naming a stage never
imports heavy libraries (bpy, transformers) in processes that do not run it."""

from __future__ import annotations

import importlib

from catalogs.stage import Stage

STAGES: dict[str, str] = {
    "ingest": "curation.ingest:IngestStage",
    "normalize": "encode.mesh:NormalizeStage",
    "voxelize": "encode.voxelize:VoxelizeStage",
    "canonical": "render.canonical:CanonicalStage",
    "render": "render.stages:RenderStage",
    "render_cond": "render.stages:RenderCondStage",
    "features": "encode.features:FeatureStage",
    "ss_latent": "encode.latents:SSLatentStage",
    "slat": "encode.latents:SLatStage",
    "aesthetic": "curation.aesthetic:AestheticStage",
    "quality": "curation.quality:QualityStage",
    "noop": "pipeline.noop:NoopStage",
}


def stage_class(name: str) -> type[Stage]:
    """A registered stage by name, or any Stage subclass by import path `package.module:Class`."""
    if ":" in name:
        target = name
    else:
        try:
            target = STAGES[name]
        except KeyError:
            raise ValueError(f"unknown stage {name!r}; known: {sorted(STAGES)}") from None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise TypeError(f"{target} is not a Stage subclass")
    if ":" not in name and cls.name != name:
        raise TypeError(f"{target} declares name {cls.name!r}, registered as {name!r}")
    return cls
