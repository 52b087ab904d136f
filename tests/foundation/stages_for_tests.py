"""Stages that misbehave on purpose, to test the runner (selected by an asset's `locator`)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from catalogs.stage import AssetTask, Stage, StageContext, StageResult, TransientError


class Misbehaving(Stage):
    name = "misbehaving"
    max_attempts = 3

    @dataclass(frozen=True)
    class Params:
        pass

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        what = task.asset["locator"]
        if what == "hang":
            time.sleep(3600)
        if what == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if what == "bug":
            raise ValueError("a bug in stage code")
        if what.startswith("flaky:"):  # fails until a counter file says enough attempts were made
            counter = Path(what.split(":", 1)[1])
            n = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(n + 1))
            if n < 2:
                raise TransientError(f"transient failure {n + 1}")
        return StageResult(uri=None, metrics={"pid": os.getpid()})


class IsolatedMisbehaving(Misbehaving):
    isolated = True
