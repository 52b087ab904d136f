"""A stage that fails with credentials in its error, its log and its traceback (security tests)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from catalogs.stage import AssetTask, Resources, Stage, StageContext, StageResult


class LeakyStage(Stage):
    name = "leaky"
    upstream = ("ingest",)
    resources = Resources(num_cpus=0.25)
    max_attempts = 1

    @dataclass(frozen=True)
    class Params:
        pass

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        hf, aws = os.environ.get("HF_TOKEN", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        url = f"https://user:{aws}@example.invalid/x?token={hf}"
        logging.getLogger("trellis_data.tests.leaky").warning("fetching %s with Authorization: Bearer %s", url, hf)
        if task.asset["locator"].startswith("b"):
            return StageResult(uri=None, metrics={"ok": True})
        raise RuntimeError(f"request to {url} failed (headers={{'Authorization': 'Bearer {hf}'}}, secret={aws})")
