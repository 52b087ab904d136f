"""The feature stage's view feed: upstream files -> decoded views -> model-ready batches on the device,
prepared by a background thread while the model runs the previous batch.

Per `run_batch` one feeder thread walks the assets in order. It reads each asset's cameras and
voxels (loader pool), projects the voxels into every view, keeps up to `prefetch` PNG decodes in
flight on the loader pool, and cuts the views into batches of `batch_views` (views of consecutive
assets share a batch). Each batch is stacked in pinned host memory, copied to the device and
resized / normalised there on a CUDA stream of its own; a CUDA event marks it ready, and at most
`depth` ready batches wait in a queue. The consumer (the model thread) makes its stream wait for
that event, so nothing on the model's path blocks the host: decode, upload and resize of batch
k+1 overlap the forward pass of batch k. On a CPU the same thread does the same work into a plain
tensor (no stream, no event): same batches, same numbers.

A view that cannot be read is skipped (and named) like the reference does; an asset whose upstream
files are unusable gets its typed error through `on_failed`; every wait has a time limit.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catalogs.stage import AssetTask, MissingUpstream


@dataclass
class FeedAsset:
    """One asset in flight: its views, projected voxels and the running sum of sampled tokens."""

    i: int
    task: AssetTask
    render_rel: str
    names: list[str]
    indices: np.ndarray
    uv: Any  # torch (V, N, 2) on the device
    acc: Any = None  # torch (C, N) float32
    loaded: int = 0
    dispatched: int = 0
    skipped: list[str] = field(default_factory=list)
    on_compute_stream: bool = False
    started: float = field(default_factory=time.monotonic)


@dataclass
class ViewBatch:
    rows: list[tuple[FeedAsset, int]]
    """(asset, view index) of every row of `pixels`, in order."""
    pixels: Any
    """Model input (B, 3, S, S) float32 on the device; None for a batch of no rows."""
    ready: Any
    """CUDA event after which `pixels` may be read (None on a CPU)."""
    done: list[FeedAsset]
    """Assets whose every view is in this batch or an earlier one (or was skipped)."""


_END = object()


class ViewFeed:
    """Iterate `ViewBatch`es of `preps` (futures of per-asset upstream reads, in asset order)."""

    def __init__(self, preps: Sequence[cf.Future], tasks: Sequence[AssetTask], *, device, loader: cf.Executor,
                 make_asset: Callable[[int, AssetTask, Any], FeedAsset], read: Callable[[str], np.ndarray],
                 upload: Callable[[list[np.ndarray]], Any], on_failed: Callable[[int, BaseException], None],
                 batch_views: int, prefetch: int, timeout_s: float, depth: int = 2) -> None:
        self.preps, self.tasks, self.device, self.loader = preps, tasks, device, loader
        self.make_asset, self.read, self.upload, self.on_failed = make_asset, read, upload, on_failed
        self.batch_views, self.prefetch, self.timeout_s = batch_views, max(prefetch, batch_views), timeout_s
        self.out: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.stream = None
        if device.type == "cuda":
            import torch

            self.stream = torch.cuda.Stream(device)
        self.thread = threading.Thread(target=self._run, name="feature-feed", daemon=True)
        self.thread.start()

    # consumer side ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[ViewBatch]:
        while True:
            try:
                item = self.out.get(timeout=self.timeout_s * 2)
            except queue.Empty:
                raise TimeoutError(f"feature feed produced nothing for {self.timeout_s * 2:.0f} s") from None
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            if item.ready is not None:  # the model's stream waits on the device, the host does not
                import torch

                current = torch.cuda.current_stream(self.device)
                current.wait_event(item.ready)
                item.pixels.record_stream(current)
                for a, _ in item.rows:
                    if not a.on_compute_stream:
                        a.uv.record_stream(current)
                        a.on_compute_stream = True
            yield item

    def close(self) -> None:
        self.stop.set()
        while self.thread.is_alive():  # unblock a feeder waiting on a full queue
            try:
                self.out.get(timeout=0.1)
            except queue.Empty:
                pass
            self.thread.join(timeout=0.1)

    # feeder side --------------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _assets(self) -> Iterator[FeedAsset]:
        for i, fut in enumerate(self.preps):
            try:
                prepared = fut.result(timeout=self.timeout_s)
                yield self.make_asset(i, self.tasks[i], prepared)
            except cf.TimeoutError:
                self.on_failed(i, MissingUpstream(f"{self.tasks[i].sha256[:12]}: reading upstream files timed out"))
            except Exception as exc:  # typed upstream failures of this asset
                self.on_failed(i, exc)

    def _views(self) -> Iterator[tuple[FeedAsset, int, cf.Future]]:
        for a in self._assets():
            for v, name in enumerate(a.names):
                yield a, v, self.loader.submit(self.read, f"{a.render_rel}/{name}")

    def _emit(self, rows: list, arrays: list, done: list) -> None:
        if not rows and not done:
            return
        pixels = ready = None
        if rows:
            pixels = self.upload(arrays)
            if self.stream is not None:
                import torch

                ready = torch.cuda.Event()
                ready.record(self.stream)
        self._put(ViewBatch(rows, pixels, ready, done))

    def _run(self) -> None:
        try:
            if self.stream is not None:
                import torch

                torch.cuda.set_stream(self.stream)  # this thread's uploads, resizes and projections
            views = self._views()
            window: collections.deque = collections.deque()
            rows: list[tuple[FeedAsset, int]] = []
            arrays: list[np.ndarray] = []
            done: list[FeedAsset] = []

            def fill() -> None:
                while len(window) < self.prefetch:
                    nxt = next(views, None)
                    if nxt is None:
                        return
                    window.append(nxt)

            fill()
            while window and not self.stop.is_set():
                a, v, fut = window.popleft()
                fill()
                try:
                    arr = fut.result(timeout=self.timeout_s)
                except Exception as exc:  # unreadable view: skipped, as in the reference (DATA_FORMATS §5 step 4)
                    fut.cancel()
                    a.skipped.append(f"{a.names[v]}: {type(exc).__name__}: {exc}"[:200])
                else:
                    rows.append((a, v))
                    arrays.append(arr)
                a.dispatched += 1
                if a.dispatched == len(a.names):
                    done.append(a)
                if len(rows) == self.batch_views:
                    self._emit(rows, arrays, done)
                    rows, arrays, done = [], [], []
            for _, _, fut in window:
                fut.cancel()
            self._emit(rows, arrays, done)
            self._put(_END)
        except BaseException as exc:  # handed to the consumer, which fails the assets without a result
            self._put(exc)
