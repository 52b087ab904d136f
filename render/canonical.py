"""The canonical stage: each asset imported once, by Blender, into one normalized form for the GPU tier.

"canonical" (upstream ingest) -> `canonical/<sha>/` with
- `model.glb`: the normalized scene (Blender frame after §3.1 normalisation, written +Y up as glTF
  requires), metallic-roughness materials with embedded textures, vertex colours;
- `mesh.ply`: the normalized mesh, from the same exporter as the Cycles render's mesh.ply;
- `canonical.json` (published last, marks the folder complete): scale, offset, world colour,
  asset signals and what the canonical form cannot carry (`render.blender_canonical`).

Every format Blender reads goes through the same importers and normalisation as the Cycles render
stage, so a GPU render of the canonical form and a Cycles render of the raw asset share scale,
offset and cameras. The stage runs on CPU nodes; the GPU render stage (engine MITSUBA) reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from catalogs import layout
from catalogs.stage import AssetTask, StageContext, StageResult
from catalogs.store import Store
from render.stages import BlenderStage, log_warnings
from render.worker import RenderFailed

FILES = ("model.glb", "mesh.ply", "canonical.json")


@contextlib.contextmanager
def local_canonical(store: Store, uri: str) -> Iterator[dict[str, Path]]:
    """Local paths of a canonical folder's files (the files themselves on a local store)."""
    rel = store.rel(uri)
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(store.local_copy(f"{rel}/{name}")) for name in FILES}


class CanonicalStage(BlenderStage):
    """Raw asset -> canonical normalized form (one Blender import per asset, on a CPU node)."""

    name = "canonical"
    version = "1"
    timeout_s = 1800.0
    layout_dir: ClassVar = staticmethod(layout.canonical)

    def job(self, local: str, fmt: str, out_dir: str) -> dict[str, Any]:
        return {"kind": "canonical", "input": local, "format": fmt, "out_dir": out_dir}

    def canonicalize(self, local: str, fmt: str, out_dir: str) -> dict[str, Any]:
        """Write the canonical files of a local asset into out_dir; returns the metrics."""
        if self.worker is None:
            self.setup()
        out = os.path.abspath(out_dir)
        reply = self.worker.run(self.job(os.path.abspath(local), fmt, out), self.job_timeout_s)
        res = reply.result
        for name in FILES[:2]:
            if not os.path.isfile(os.path.join(out, name)):
                raise RenderFailed(f"canonical export wrote no {name}", log_text=reply.log_text)
        record = {"scale": res["scale"], "offset": res["offset"], "format": fmt, "blender": res["blender"],
                  **res["canonical"], "signals": res["signals"]}
        Path(out, "canonical.json").write_text(json.dumps(record, indent=1, sort_keys=True))
        return {
            "format": fmt,
            "scale": res["scale"],
            "import_s": res["timings"]["import_s"],
            "export_s": res["timings"]["export_s"],
            "blender_s": res["timings"]["total_s"],
            "job_s": reply.seconds,
            "cold_start": reply.started_child,
            "blender_log_warnings": log_warnings(reply.log_text),
            "glb_bytes": os.path.getsize(os.path.join(out, "model.glb")),
            **res["canonical"],
            **res["signals"],
        }

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        rel_dir = self.layout_dir(task.sha256)
        with self._asset_file(task, ctx) as (local, fmt), tempfile.TemporaryDirectory(prefix="trellis-canon-") as out:
            metrics = self.canonicalize(local, fmt, out)
            ctx.store.delete(rel_dir)
            nbytes = ctx.store.publish_dir(out, rel_dir, last=("canonical.json",))
        return StageResult(uri=ctx.store.uri(rel_dir), bytes=nbytes, metrics=metrics)
