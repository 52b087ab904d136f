"""Source registry: name -> Source class. Sources register here so specs can name them."""

from __future__ import annotations

from typing import Any

from curation.sources.base import AssetRecord, Source
from curation.sources.local import LocalSource
from curation.sources.sample import SampleSource
from curation.sources.archives import AboSource, Future3DSource, Toys4kSource
from curation.sources.hssd import HssdSource
from curation.sources.objaverse_xl import ObjaverseGithubSource, ObjaverseSketchfabSource

SOURCES: dict[str, type[Source]] = {
    SampleSource.name: SampleSource,
    LocalSource.name: LocalSource,
    ObjaverseSketchfabSource.name: ObjaverseSketchfabSource,
    ObjaverseGithubSource.name: ObjaverseGithubSource,
    AboSource.name: AboSource,
    Future3DSource.name: Future3DSource,
    HssdSource.name: HssdSource,
    Toys4kSource.name: Toys4kSource,
}


def get_source(name: str, **options: Any) -> Source:
    try:
        cls = SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown source {name!r}; known: {sorted(SOURCES)}") from None
    return cls(**options)


__all__ = ["AssetRecord", "Source", "SOURCES", "get_source"]
