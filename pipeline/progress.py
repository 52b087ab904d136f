"""Per-stage progress bars on the driver: done/total, rate, ETA and failures, fed by records."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tqdm import tqdm


class StageProgress:
    def __init__(self, stages: Sequence[tuple[str, int]], enabled: bool = True) -> None:
        self.failed = {name: 0 for name, _ in stages}
        self.bars = {
            name: tqdm(total=total, desc=f"{name:>12}", unit="asset", position=i, leave=True, dynamic_ncols=True,
                       disable=not enabled, file=sys.stderr, smoothing=0.1)
            for i, (name, total) in enumerate(stages)
        }

    def update(self, records: Iterable[Mapping[str, Any]]) -> None:
        for r in records:
            bar = self.bars.get(r["stage"])
            if bar is None:
                continue
            if r["status"] != "ok":
                self.failed[r["stage"]] += 1
                bar.set_postfix(failed=self.failed[r["stage"]], refresh=False)
            bar.update(1)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
