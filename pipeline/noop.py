"""A stage that does nothing but return a record: measures orchestration overhead (bench/)."""

from __future__ import annotations

from dataclasses import dataclass

from catalogs.stage import AssetTask, Resources, Stage, StageContext, StageResult


class NoopStage(Stage):
    name = "noop"
    resources = Resources(num_cpus=0.25)

    @dataclass(frozen=True)
    class Params:
        tag: str = ""

    @property
    def variant(self) -> str:
        return self.params.tag

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        return StageResult(uri=None, metrics={"tag": self.params.tag})
