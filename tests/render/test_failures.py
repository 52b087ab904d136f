"""Typed failures with Blender's log kept: corrupt file, empty scene, hang, crash; the run goes on."""

import os
import signal
import threading
import time

import pytest

from catalogs.stage import (
    CorruptFile,
    EmptyFile,
    EmptyGeometry,
    StageTimeout,
    UnsupportedFormat,
    WorkerCrashed,
    classify,
)
from conftest import sha_of
from render.stages import RenderStage
from render.worker import BlenderWorker


def test_corrupt_file(wb_stage, fx, tmp_path):
    pid = wb_stage.worker.pid
    with pytest.raises(CorruptFile) as ei:
        wb_stage.render_to(str(fx["corrupt"]), "glb", sha_of(fx["corrupt"]), str(tmp_path))
    assert "import failed" in str(ei.value) and ei.value.log_text  # Blender's traceback kept
    assert classify(ei.value) == ("corrupt_file", False)
    assert wb_stage.worker.pid == pid  # a bad file does not cost the warm worker


def test_empty_scenes(wb_stage, fx, tmp_path):
    for key, fmt in (("empty_obj", "obj"), ("empty_blend", "blend")):
        with pytest.raises(EmptyGeometry):
            wb_stage.render_to(str(fx[key]), fmt, "0" * 64, str(tmp_path / key))
    empty = tmp_path / "zero.glb"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFile):
        wb_stage.render_to(str(empty), "glb", "0" * 64, str(tmp_path / "zero"))
    with pytest.raises(UnsupportedFormat):
        wb_stage.render_to(str(fx["sphere"]), "3ds", "0" * 64, str(tmp_path / "x"))


def test_sleeping_job_times_out_after_1s():
    with BlenderWorker() as w:
        w.start()
        t0 = time.monotonic()
        with pytest.raises(StageTimeout) as ei:
            w.run({"kind": "sleep", "seconds": 600}, timeout=1.0)
        assert 1.0 <= time.monotonic() - t0 < 5
        assert "sleep job" in ei.value.log_text and not w.alive()
        assert w.run({"kind": "ping"}, timeout=60).started_child


def test_hang_times_out_and_next_asset_renders(fx, tmp_path):
    """A heavy Cycles render with a short limit: StageTimeout with the log so far, worker replaced.

    (2 s rather than 1 s so that the import has surely printed something on a loaded machine.)"""
    stage = RenderStage(params={"samples": 4096, "resolution": 512, "num_views": 2, "denoise": False},
                        config={"threads": 1, "job_timeout_s": 2.0})
    try:
        stage.setup()
        first_pid = stage.worker.pid
        t0 = time.monotonic()
        with pytest.raises(StageTimeout) as ei:
            stage.render_to(str(fx["torus"]), "glb", sha_of(fx["torus"]), str(tmp_path / "hang"))
        assert time.monotonic() - t0 < 15
        assert ei.value.retryable and ei.value.log_text and "glTF" in ei.value.log_text
        assert not stage.worker.alive()
        # the next asset renders fine in a fresh child
        light = RenderStage(params={"engine": "BLENDER_WORKBENCH", "resolution": 32, "num_views": 2},
                            config={"threads": 1})
        light.worker = stage.worker  # same worker object, replaced child
        m = light.render_to(str(fx["sphere"]), "glb", sha_of(fx["sphere"]), str(tmp_path / "next"))
        assert m["cold_start"] is True and stage.worker.pid != first_pid
        assert (tmp_path / "next" / "transforms.json").exists()
    finally:
        stage.close()


def test_crash_gives_worker_crashed(fx, tmp_path):
    with BlenderWorker() as w:
        w.start()
        pid = w.pid
        threading.Timer(1.0, lambda: os.kill(pid, signal.SIGSEGV)).start()
        with pytest.raises(WorkerCrashed) as ei:
            w.run({"kind": "sleep", "seconds": 60}, timeout=30)
        assert "SIGSEGV" in str(ei.value) and "sleep job" in ei.value.log_text
        assert ei.value.retryable
        assert w.run({"kind": "ping"}, timeout=30).result["pid"] != pid  # replaced


def test_crash_during_render(fx, tmp_path):
    stage = RenderStage(params={"samples": 4096, "resolution": 256, "num_views": 1, "denoise": False},
                        config={"threads": 1, "timeout_s": 120})
    try:
        stage.setup()
        pid = stage.worker.pid
        threading.Timer(3.0, lambda: os.kill(pid, signal.SIGSEGV)).start()
        with pytest.raises(WorkerCrashed) as ei:
            stage.render_to(str(fx["torus"]), "glb", sha_of(fx["torus"]), str(tmp_path))
        assert ei.value.log_text  # what Blender printed before dying
    finally:
        stage.close()


def test_errors_survive_pickling():
    import pickle

    from render.worker import make_error

    e = pickle.loads(pickle.dumps(make_error("export_failed", "no ply", "LOG")))
    assert e.error_type == "render_failed" and e.log_text == "LOG"
    e = pickle.loads(pickle.dumps(make_error("internal:KeyError", "boom", "LOG")))
    assert e.error_type == "render_internal"
