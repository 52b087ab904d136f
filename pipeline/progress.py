"""Live per-stage progress: workers count what they finish in a small Ray actor, and a driver
thread turns those counts into one bar per stage (done/total, rate, ETA, failures, and assets
skipped because an upstream stage failed, so every bar reaches its total).

Records reach the driver only when an asset leaves the last stage, so the counts, not the records,
are what make the bars move while upstream stages work.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence

from tqdm import tqdm


class ProgressCounter:
    """Ray actor (created with `ray.remote(num_cpus=0)`): per-stage (done, failed) counters."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}

    def add(self, stage: str, done: int, failed: int, skipped: int = 0) -> None:
        """`done` includes `failed`; `skipped` assets were planned but blocked by an upstream failure."""
        c = self.counts.setdefault(stage, [0, 0, 0])
        c[0] += done
        c[1] += failed
        c[2] += skipped

    def snapshot(self) -> dict[str, list[int]]:
        return self.counts


class StageProgress:
    """Driver-side bars fed by a ProgressCounter actor, refreshed from a background thread."""

    def __init__(self, stages: Sequence[tuple[str, int]], counter=None, enabled: bool = True, interval_s: float = 0.5):
        self.counter, self.interval_s = counter, interval_s
        self.bars = {
            name: tqdm(total=total, desc=f"{name:>12}", unit="asset", position=i, leave=True, dynamic_ncols=True,
                       disable=not enabled, file=sys.stderr, smoothing=0.1)
            for i, (name, total) in enumerate(stages)
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="progress", daemon=True)
        if counter is not None and enabled:
            self._thread.start()

    def set_counts(self, counts: Mapping[str, Sequence[int]]) -> None:
        for stage, c in counts.items():
            bar = self.bars.get(stage)
            if bar is None:
                continue
            done, failed, skipped = (list(c) + [0, 0, 0])[:3]
            post = {k: v for k, v in (("failed", failed), ("skipped", skipped)) if v}
            if post:
                bar.set_postfix(post, refresh=False)
            bar.update(max(0, done + skipped - bar.n))

    def _poll(self) -> None:
        import ray

        while not self._stop.wait(self.interval_s):
            try:
                self.set_counts(ray.get(self.counter.snapshot.remote(), timeout=5))
            except Exception:  # progress is best effort; never break the build
                continue

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.counter is not None:
            try:
                import ray

                self.set_counts(ray.get(self.counter.snapshot.remote(), timeout=5))
            except Exception:
                pass
        for bar in self.bars.values():
            bar.close()
