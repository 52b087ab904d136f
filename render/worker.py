"""Warm Blender worker: a long-lived child process that imports bpy once and renders many assets.

The parent (a Ray actor, a test, a benchmark) owns a `BlenderWorker`. Each `run(job, timeout)`
sends one job over a pipe and waits. The child redirects its file descriptors 1 and 2 to a
per-job log file while it works, so Blender's own output (C-level prints, Cycles, importers) is
captured per asset. Outcomes:

- success: the child's result dict plus the log text;
- a typed scene error (corrupt file, empty scene, unsupported format ...): the matching
  `catalogs.stage.StageError` subclass with the log attached; the child stays warm;
- no answer within `timeout`: the child is killed, `StageTimeout` with the log so far;
- the child dies (segfault, OOM kill, abort): `WorkerCrashed` with the exit signal and the log.

After a kill or crash the next `run` starts a fresh child. A child is also replaced after
`max_jobs` jobs, which bounds any slow leak inside Blender.

This module never imports bpy in the parent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from catalogs.stage import (
    BadInput,
    CorruptFile,
    EmptyFile,
    EmptyGeometry,
    MissingUpstream,
    NonFinite,
    StageError,
    StageTimeout,
    UnsupportedFormat,
    WorkerCrashed,
)

LOG_TAIL_BYTES = 256 * 1024
"""At most this much of a job's Blender log is kept (the end, where the error is)."""

class RenderFailed(StageError):
    """Blender ran but did not produce what it should (a view or mesh.ply not written)."""

    error_type = "render_failed"


class DeviceUnavailable(StageError):
    """The requested Cycles device (e.g. OPTIX) does not exist on this node: worth another node."""

    error_type = "device_unavailable"
    retryable = True


class RenderInternalError(StageError):
    """A Python exception inside the Blender child that is not a known scene error (a bug)."""

    error_type = "render_internal"


_ERRORS: dict[str, type[StageError]] = {
    c.error_type: c
    for c in (BadInput, CorruptFile, EmptyFile, EmptyGeometry, NonFinite, MissingUpstream, UnsupportedFormat,
              DeviceUnavailable)
}
_ERRORS.update({"render_failed": RenderFailed, "export_failed": RenderFailed})


def make_error(error_type: str, message: str, log_text: str | None) -> StageError:
    """The StageError subclass for the child's `error_type` (a class, so it survives pickling)."""
    cls = _ERRORS.get(error_type)
    if cls is not None:
        return cls(message, log_text=log_text)
    if error_type.startswith("internal:"):
        return RenderInternalError(message, log_text=log_text)
    return RenderFailed(f"{error_type}: {message}", log_text=log_text)


# -- child side -----------------------------------------------------------------------------------
def _unbuffer_c_stdio() -> None:
    """Make C stdout unbuffered so a segfault does not eat the last lines of Blender's log."""
    with contextlib.suppress(Exception):
        import ctypes  # noqa: PLC0415

        libc = ctypes.CDLL(None)
        for name in ("stdout", "stderr"):
            stream = ctypes.c_void_p.in_dll(libc, name)
            libc.setvbuf(stream, None, 2, 0)  # _IONBF


def _flush_all() -> None:
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    with contextlib.suppress(Exception):
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _redirect_fds(path: str):
    _flush_all()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        yield
    finally:
        _flush_all()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _handle(job: dict[str, Any]) -> dict[str, Any]:
    kind = job.get("kind", "render")
    if kind == "render":
        from render import blender_scene  # noqa: PLC0415

        return blender_scene.render_asset(job)
    if kind == "canonical":
        from render import blender_canonical  # noqa: PLC0415

        return blender_canonical.canonical_asset(job)
    if kind == "sleep":  # diagnostics: simulates a job that hangs
        print(f"sleep job: {job.get('seconds', 3600)} s", flush=True)
        time.sleep(float(job.get("seconds", 3600)))
        return {"slept": job.get("seconds")}
    if kind == "ping":
        return {"pid": os.getpid()}
    raise ValueError(f"unknown job kind {kind!r}")


def _exit_with_parent() -> None:
    """Leave when the parent process goes away, so a killed actor never leaves Blender running."""
    import threading  # noqa: PLC0415

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_main(conn) -> None:
    _exit_with_parent()
    _unbuffer_c_stdio()
    with contextlib.suppress(Exception):
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
    t0 = time.perf_counter()
    try:
        import bpy  # noqa: F401, PLC0415

        from render import blender_scene  # noqa: F401, PLC0415
    except BaseException as exc:  # noqa: BLE001
        conn.send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    conn.send({"ready": True, "pid": os.getpid(), "import_s": time.perf_counter() - t0})
    from render.blender_scene import SceneError  # noqa: PLC0415

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        t = time.perf_counter()
        with _redirect_fds(job["log_path"]):
            try:
                reply = {"ok": True, "result": _handle(job)}
            except SceneError as exc:
                traceback.print_exc()
                reply = {"ok": False, "error_type": exc.error_type, "message": str(exc)}
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                reply = {"ok": False, "error_type": f"internal:{type(exc).__name__}",
                         "message": f"{type(exc).__name__}: {exc}"}
        reply["seconds"] = time.perf_counter() - t
        conn.send(reply)


# -- parent side ----------------------------------------------------------------------------------
@dataclass
class WorkerReply:
    result: dict[str, Any]
    log_text: str
    seconds: float
    """Wall time from sending the job to receiving the answer (includes the pipe)."""
    child_seconds: float
    started_child: bool
    """True when this job had to start a fresh child first (cold start)."""


def _read_tail(path: str, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return text if size <= limit else f"[... {size - limit} bytes cut ...]\n{text}"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class BlenderWorker:
    """One warm Blender child process and the protocol to drive it. Not thread-safe.

    The child is a plain `python -m render.worker` subprocess talking over a socket pair, so it
    never re-imports the parent's main module (as multiprocessing's spawn would).
    """

    def __init__(self, *, max_jobs: int = 200, startup_timeout: float = 180.0, env: dict[str, str] | None = None,
                 log_dir: str | None = None, keep_logs: bool = False) -> None:
        self.max_jobs = max_jobs
        self.startup_timeout = startup_timeout
        self.env = dict(env or {})
        self.keep_logs = keep_logs
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="trellis-blender-logs-")
        os.makedirs(self.log_dir, exist_ok=True)
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._jobs_done = 0
        self._seq = 0
        self.starts = 0
        self.last_import_s: float | None = None
        self.last_start_s: float | None = None

    # lifecycle ----------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the child and wait until bpy is imported (raises WorkerCrashed if it cannot)."""
        if self.alive():
            return
        self._discard()
        t0 = time.perf_counter()
        ours, theirs = socket.socketpair()
        boot_log = os.path.join(self.log_dir, f"boot-{self.starts}.log")
        env = {**os.environ, **self.env}
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        with open(boot_log, "wb") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "render.worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                env=env, close_fds=True,
            )
        theirs.close()
        self._proc, self._conn = proc, Connection(ours.detach())
        self.starts += 1
        self._jobs_done = 0
        deadline = time.monotonic() + self.startup_timeout
        while True:
            msg = None
            try:
                if self._conn.poll(0.2):
                    msg = self._conn.recv()
            except (EOFError, OSError):
                msg = {"ready": False, "error": "connection closed"}
            if msg is not None:
                if msg.get("ready"):
                    self.last_import_s = msg.get("import_s")
                    self.last_start_s = time.perf_counter() - t0
                    return
                self._kill()
                raise WorkerCrashed(f"blender worker failed to start: {msg.get('error')} "
                                    f"({_describe_exit(proc.returncode)})", log_text=_read_tail(boot_log))
            if proc.poll() is not None:
                code = proc.returncode
                self._kill()
                raise WorkerCrashed(f"blender worker died at start: {_describe_exit(code)}",
                                    log_text=_read_tail(boot_log))
            if time.monotonic() > deadline:
                self._kill()
                raise StageTimeout(f"blender worker did not start in {self.startup_timeout:.0f} s",
                                   log_text=_read_tail(boot_log))

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(10)
        self._discard()

    def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        if self._proc is not None:
            with contextlib.suppress(Exception):
                self._proc.poll()
        self._proc = self._conn = None

    def close_child(self) -> None:
        """Retire the current child (the next job starts a fresh one)."""
        if self.alive():
            with contextlib.suppress(Exception):
                self._conn.send(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        self._kill()

    def close(self) -> None:
        """Stop the child and remove the log folder this worker made."""
        self.close_child()
        if self._own_log_dir and not self.keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> BlenderWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # jobs ---------------------------------------------------------------------------------------
    def run(self, job: dict[str, Any], timeout: float) -> WorkerReply:
        """Run one job in the child; raises a StageError subclass (with `log_text`) on failure."""
        started = False
        if self._proc is not None and self._jobs_done >= self.max_jobs:
            self.close_child()
        if not self.alive():
            self.start()
            started = True
        self._seq += 1
        log_path = os.path.join(self.log_dir, f"job-{self._seq}.log")
        job = dict(job, log_path=log_path)
        t0 = time.perf_counter()
        try:
            self._conn.send(job)
            reply = self._wait(timeout, log_path)
        finally:
            log_text = _read_tail(log_path)
            if not self.keep_logs:
                with contextlib.suppress(OSError):
                    os.remove(log_path)
        self._jobs_done += 1
        seconds = time.perf_counter() - t0
        if not reply.get("ok"):
            raise make_error(reply.get("error_type", "stage_error"), reply.get("message", ""), log_text)
        return WorkerReply(reply["result"], log_text, seconds, float(reply.get("seconds", 0.0)), started)

    def _wait(self, timeout: float, log_path: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        proc, conn = self._proc, self._conn
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                raise StageTimeout(f"blender job exceeded {timeout:g} s; worker killed and replaced",
                                   log_text=_read_tail(log_path))
            try:
                if conn.poll(min(0.25, remaining)):
                    return conn.recv()
            except (EOFError, OSError):
                pass
            else:
                if proc.poll() is None:
                    continue
                # the child may have answered just before exiting
                with contextlib.suppress(EOFError, OSError):
                    if conn.poll(0):
                        return conn.recv()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)
            code = proc.returncode
            self._kill()
            raise WorkerCrashed(f"blender worker crashed ({_describe_exit(code)})", log_text=_read_tail(log_path))


if __name__ == "__main__":  # the child: python -m render.worker <socket fd>
    _child_main(Connection(int(sys.argv[1])))
