"""Running one stage over a block of assets inside a Ray worker: timeouts, retries, isolation.

`StageRunner` is the callable class Ray Data puts in an actor pool, so `Stage.setup()` runs once
per actor. Each row of a block is one asset; the runner runs the stage where the asset's plan says
so and its upstream did not fail, retries retryable failures with capped exponential backoff, and
appends an artifact record to the row. Failures are data: they never escape the runner.

Stages marked `isolated` run in a warm child process (pebble) that is killed and replaced when an
asset times out or crashes it, so one bad file cannot take the worker down or hang the stage.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import multiprocessing
import os
import random
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from catalogs.catalog import utcnow
from catalogs.stage import (
    ArtifactRef, AssetTask, Stage, StageContext, StageError, StageResult, StageTimeout, WorkerCrashed, classify,
)
from catalogs.store import Store

log = logging.getLogger("trellis_data.runner")

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
LOG_KEEP_CHARS = 64_000


def backoff_s(attempt: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S) -> float:
    """Capped exponential backoff with full jitter for the `attempt`-th retry (1-based)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


# -- isolated child process ----------------------------------------------------------------------
_CHILD: dict[str, Any] = {}


def _child_init(entry: Mapping[str, Any], store_url: str, storage_options: Mapping[str, Any], run_id: str, node_id: str) -> None:
    from pipeline.spec import StageEntry

    stage = StageEntry(**entry).build()
    stage.setup()
    _CHILD["stage"] = stage
    _CHILD["ctx"] = StageContext(Store(store_url, **storage_options), run_id, node_id)


def _child_run(task: AssetTask) -> StageResult:
    return _CHILD["stage"].run(task, _CHILD["ctx"])


class _Isolated:
    """One warm child process running the stage; replaced after a timeout or a crash."""

    def __init__(self, entry: Mapping[str, Any], ctx_args: tuple) -> None:
        from pebble import ProcessPool

        self._pool_cls = ProcessPool
        self._entry, self._ctx_args = entry, ctx_args
        self._pool = self._new_pool()

    def _new_pool(self):
        return self._pool_cls(max_workers=1, initializer=_child_init, initargs=(self._entry, *self._ctx_args),
                              context=multiprocessing.get_context("fork"))

    def run(self, task: AssetTask, timeout_s: float) -> StageResult:
        from pebble import ProcessExpired

        future = self._pool.schedule(_child_run, args=(task,), timeout=timeout_s)
        try:
            return future.result()
        except concurrent.futures.TimeoutError:
            raise StageTimeout(f"{task.sha256[:12]}: no result after {timeout_s:.0f} s; worker process replaced") from None
        except ProcessExpired as exc:
            self._pool.stop()
            self._pool = self._new_pool()
            raise WorkerCrashed(f"{task.sha256[:12]}: worker process died ({exc}); replaced") from None

    def close(self) -> None:
        self._pool.stop()
        self._pool.join()


class _InThread:
    """Runs the stage in a daemon thread so a time limit can be enforced without a child process.

    A timed-out call cannot be killed; its daemon thread is abandoned (it never blocks exit) and
    the next call gets a new thread. Stages that parse untrusted files should be `isolated`.
    """

    def __init__(self, stage: Stage, ctx: StageContext) -> None:
        self.stage, self.ctx = stage, ctx

    def call(self, fn, timeout_s: float, what: str):
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc

        t = threading.Thread(target=target, name=f"stage-{self.stage.name}", daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            raise StageTimeout(f"{what}: no result after {timeout_s:.0f} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def run(self, task: AssetTask, timeout_s: float) -> StageResult:
        return self.call(lambda: self.stage.run(task, self.ctx), timeout_s, task.sha256[:12])

    def run_batch(self, tasks: list[AssetTask], timeout_s: float) -> list[StageResult | BaseException]:
        return self.call(lambda: self.stage.run_batch(tasks, self.ctx), timeout_s * len(tasks), f"batch of {len(tasks)}")

    def close(self) -> None:
        pass


# -- the Ray Data UDF ----------------------------------------------------------------------------
class StageRunner:
    """Callable class for `Dataset.map_batches`: one stage, set up once per actor."""

    def __init__(self, entry: Mapping[str, Any], bit: int, upstream_bits: int, fingerprint: str, store_url: str,
                 storage_options: Mapping[str, Any], run_id: str, progress=None) -> None:
        from curation.errors import install_log_redaction
        from pipeline.spec import StageEntry

        root_logger = logging.getLogger()
        if not root_logger.handlers:  # else Python's last-resort handler would print records unfiltered
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root_logger.addHandler(handler)
        install_log_redaction()  # this worker's log handlers drop tokens and credentials too
        try:
            import ray

            node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # outside Ray (unit tests)
            node_id = os.uname().nodename
        self.stage = StageEntry(**entry).build()
        self.bit, self.upstream_bits, self.fingerprint = bit, upstream_bits, fingerprint
        self.progress = progress
        self.ctx = StageContext(Store(store_url, **storage_options), run_id, node_id)
        if self.stage.isolated:
            self.worker: _Isolated | _InThread = _Isolated(entry, (store_url, dict(storage_options), run_id, node_id))
        else:
            self.stage.setup()
            self.worker = _InThread(self.stage, self.ctx)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        due = [r for r in rows if r["todo"] & self.bit and not r["failed"] & self.upstream_bits]
        blocked = [r for r in rows if r["todo"] & self.bit and r["failed"] & self.upstream_bits]
        for r in blocked:  # no record: the upstream failure explains it, and the planner skips it
            r["failed"] |= self.bit
        if due:
            tasks = [self._task(r) for r in due]
            results = self._run_all(tasks, due)
            for row, (result, attempts, seconds) in zip(due, results):
                self._record(row, result, attempts, seconds)
            if self.progress is not None:
                failed = sum(isinstance(r, BaseException) for r, _, _ in results)
                self.progress.add.remote(self.stage.name, len(due), failed)
        if blocked and self.progress is not None:  # so the stage's bar still reaches its total
            self.progress.add.remote(self.stage.name, 0, 0, len(blocked))
        return pa.Table.from_pylist(rows, schema=batch.schema)

    # internals -------------------------------------------------------------------------------
    def _task(self, row: Mapping[str, Any]) -> AssetTask:
        inputs = {k: ArtifactRef(v.get("uri"), _loads(v.get("metrics"))) for k, v in json.loads(row["inputs"]).items()}
        return AssetTask(row["sha256"], json.loads(row["asset"]), inputs)

    def _run_all(self, tasks: list[AssetTask], rows: list[dict]) -> list[tuple[Any, int, float]]:
        """Run every task with retries; returns (result or exception, attempts, seconds) per task."""
        prior = [int(json.loads(r["attempts"]).get(self.stage.name, 0)) for r in rows]
        out: list[tuple[Any, int, float] | None] = [None] * len(tasks)
        pending = list(range(len(tasks)))
        tries = 0
        while pending:
            tries += 1
            started = time.monotonic()
            if self.stage.batch_size > 1 and isinstance(self.worker, _InThread):
                try:
                    results = self.worker.run_batch([tasks[i] for i in pending], self.stage.timeout_s)
                except Exception as exc:  # the whole batch failed (e.g. timeout)
                    results = [exc] * len(pending)
                each = (time.monotonic() - started) / len(pending)
                timed = [(r, each) for r in results]
            else:
                timed = []
                for i in pending:
                    t0 = time.monotonic()
                    try:
                        res: Any = self.worker.run(tasks[i], self.stage.timeout_s)
                    except Exception as exc:
                        res = exc
                    timed.append((res, time.monotonic() - t0))
            retry = []
            for i, (res, secs) in zip(pending, timed):
                attempts = prior[i] + tries
                out[i] = (res, attempts, secs)
                if isinstance(res, BaseException):
                    etype, retryable = classify(res)
                    log.warning("asset %s stage %s attempt %d failed: %s: %s", tasks[i].sha256[:12], self.stage.name,
                                attempts, etype, _redact(str(res)))
                    if retryable and attempts < self.stage.max_attempts:
                        retry.append(i)
            pending = retry
            if pending:
                time.sleep(backoff_s(tries))
        return out  # type: ignore[return-value]

    def _record(self, row: dict, result: Any, attempts: int, seconds: float) -> None:
        rec: dict[str, Any] = {
            "sha256": row["sha256"], "stage": self.stage.name, "variant": self.stage.variant,
            "fingerprint": self.fingerprint, "attempts": attempts, "run_id": self.ctx.run_id,
            "node_id": self.ctx.node_id, "seconds": round(seconds, 6), "updated_at": utcnow().isoformat(),
        }
        if isinstance(result, BaseException):
            etype, retryable = classify(result)
            text = result.log_text if isinstance(result, StageError) else None
            if not isinstance(result, StageError):
                text = "".join(traceback.format_exception(result))
            # Error texts and tool logs reach the catalog: no token or credential may ride along.
            rec.update(status="failed", error_type=etype, error=_redact(str(result))[:2000], retryable=retryable,
                       log=(text or None) and _redact(text[-LOG_KEEP_CHARS:]))
            row["failed"] |= self.bit
        else:
            rec.update(status="ok", uri=result.uri, bytes=int(result.bytes), metrics=dict(result.metrics))
            inputs = json.loads(row["inputs"])
            inputs[self.stage.name] = {"uri": result.uri, "metrics": dict(result.metrics)}
            row["inputs"] = json.dumps(inputs)
        records = json.loads(row["records"])
        records.append(rec)
        row["records"] = json.dumps(records, default=str)

    def __del__(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.close()


def _redact(text: str) -> str:
    from curation.errors import redact

    return redact(text)


def _loads(v: Any) -> dict:
    if v is None:
        return {}
    return json.loads(v) if isinstance(v, str) else dict(v)
