"""The render stages: feature renders (`renders/<sha>/`) and conditioning renders (`renders_cond/<sha>/`).

Both read the raw asset that the ingest stage stored (`task.input("ingest").uri`, format from
`task.asset["format"]`), render it in a warm Blender worker (`render.worker.BlenderWorker`, started
by `setup()`), and publish the directory with `transforms.json` last, so its presence means the
directory is complete (mesh.ply included, unlike the reference, G8).

Isolation is built in: the Blender child is killed and replaced on a timeout or crash and the
failure comes back typed, with Blender's log for that asset. The stages therefore run in the
executor's own process (`isolated = False`), which avoids a Blender process nested in a second
throw-away process that could be orphaned when the outer one is killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import numpy as np

from catalogs import layout
from catalogs.stage import (
    AssetTask,
    CorruptFile,
    Resources,
    Stage,
    StageContext,
    StageError,
    StageResult,
    UnsupportedFormat,
)
from render import cameras
from render.worker import BlenderWorker

SUPPORTED = ("glb", "gltf", "obj", "fbx", "ply", "stl", "blend", "usd", "usda", "usdc", "usdz", "abc", "dae")
MAIN_FILE_PRIORITY = ("glb", "gltf", "blend", "fbx", "obj", "usdz", "usd", "usdc", "usda", "abc", "dae", "ply", "stl")
"""Which file of a multi-file archive is the asset, when the catalog does not name it."""

ARCHIVES = ("zip", "tar", "tgz", "gz", "bz2", "xz")
ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH", "MITSUBA")
MITSUBA_DEVICES = {"CUDA": "cuda", "GPU": "cuda", "CPU": "llvm", "LLVM": "llvm"}
"""Render-stage `device` -> Mitsuba backend."""
PIXEL_FILTERS = ("BLACKMAN_HARRIS", "GAUSSIAN", "BOX")
PASSES = ("depth", "normal", "albedo")


class CameraMismatch(StageError):
    """Blender's camera matrix differs from the planned one: a scene set-up bug, not the asset's."""

    error_type = "camera_mismatch"


# -- archives -------------------------------------------------------------------------------------
def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Extract a zip or tar with curation's safe extractor (no escapes, links, bombs); relative names."""
    from curation.extract import safe_extract as _extract  # noqa: PLC0415

    dest = Path(dest)
    return sorted(p.relative_to(dest).as_posix() for p in _extract(archive, dest))


def is_archive(path: str) -> bool:
    """A zip or tar by content. (.usdz is a zip too: callers ask only when the format says archive.)"""
    if zipfile.is_zipfile(path):
        return True
    with contextlib.suppress(OSError, tarfile.TarError, EOFError):
        return tarfile.is_tarfile(path)
    return False


def package_entry(path: str) -> dict[str, Any] | None:
    """The manifest of a curation asset package (zip + trellis_package.json naming the entry), if any."""
    from curation.package import is_package, read_manifest  # noqa: PLC0415

    try:
        return read_manifest(path) if is_package(path) else None
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise CorruptFile(f"unreadable package manifest: {exc}") from exc


def pick_main_file(names: list[str], root: Path, hint: str | None = None) -> str:
    """The model file of an extracted archive: `hint` if given, else by format priority, then size."""
    if hint:
        hint = hint.replace("\\", "/").lstrip("/")
        if hint not in names:
            raise CorruptFile(f"archive has no member {hint!r}")
        return hint
    by_ext: dict[str, list[str]] = {}
    for n in names:
        if "__MACOSX" in n.split("/"):
            continue
        by_ext.setdefault(n.rsplit(".", 1)[-1].lower() if "." in n else "", []).append(n)
    for ext in MAIN_FILE_PRIORITY:
        if ext in by_ext:
            return max(by_ext[ext], key=lambda n: (root / n).stat().st_size)
    raise UnsupportedFormat(f"archive holds no supported 3D file ({len(names)} files)")


_BENIGN = ("EGL Error", "CUEW initialization failed")


def log_warnings(text: str) -> int:
    """Lines of Blender's log that warn or complain, less the known-harmless headless ones."""
    n = 0
    for line in text.splitlines():
        low = line.lower()
        if ("warn" in low or "error" in low) and not any(b in line for b in _BENIGN):
            n += 1
    return n


@contextlib.contextmanager
def resolve_asset(local: str, fmt: str, hint: str | None = None) -> Iterator[tuple[str, str]]:
    """(model file, format) of a local asset file. Archives and curation packages are extracted
    (safely) into a temporary folder that lives as long as the context; `hint` names the entry."""
    fmt = fmt.lower().lstrip(".")
    with contextlib.ExitStack() as stack:
        manifest = package_entry(local) if zipfile.is_zipfile(local) else None
        if manifest is not None or fmt in ARCHIVES or (fmt not in SUPPORTED and is_archive(local)):
            d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="trellis-pkg-")))
            names = safe_extract(local, d)
            main = pick_main_file(names, d, str(manifest.get("entry") or "") if manifest is not None else hint)
            local = str(d / main)
            fmt = str((manifest or {}).get("format") or main.rsplit(".", 1)[-1]).lower().lstrip(".")
        if fmt not in SUPPORTED:
            raise UnsupportedFormat(f"format {fmt!r} is not rendered (supported: {', '.join(SUPPORTED)})")
        yield local, fmt


# -- the stages -----------------------------------------------------------------------------------
class BlenderStage(Stage):
    """What every stage that drives the warm Blender worker shares: the worker's lifecycle, limits
    and the fetch of the raw asset (archives and packages extracted)."""

    upstream = ("ingest",)
    resources = Resources(num_cpus=1.0, memory=3 * 1024**3)
    timeout_s = 7200.0
    max_attempts = 2
    isolated = False  # isolation is built in (see module docstring)

    def __init__(self, params=None, config=None, **kw) -> None:
        super().__init__(params, config, **kw)
        if "timeout_s" in self.config:
            self.timeout_s = float(self.config["timeout_s"])
        self.worker: BlenderWorker | None = None

    # config (not in the fingerprint) --------------------------------------------------------------
    @property
    def threads(self) -> int:
        return int(self.config.get("threads", max(1, int(self.resources.num_cpus))))

    @property
    def job_timeout_s(self) -> float:
        """The Blender job's limit: the stage timeout less a small margin for fetch and publish,
        so the worker's own timeout (which keeps the log) fires before the executor's."""
        t = float(self.config.get("job_timeout_s", 0) or 0)
        if t > 0:
            return t
        return max(0.5, self.timeout_s - min(60.0, 0.05 * self.timeout_s))

    # lifecycle -----------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.worker is None:
            env = {"MESA_SHADER_CACHE_DIR": self.config.get("mesa_cache_dir",
                                                            os.path.join(tempfile.gettempdir(), "trellis-mesa-cache"))}
            self.worker = BlenderWorker(max_jobs=int(self.config.get("max_jobs_per_worker", 200)), env=env,
                                        keep_logs=bool(self.config.get("keep_logs", False)))
        self.worker.start()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["worker"] = None  # a warm child never travels with the stage
        return state

    @contextlib.contextmanager
    def _asset_file(self, task: AssetTask, ctx: StageContext) -> Iterator[tuple[str, str]]:
        """(local path, format) of the asset; archives are extracted into a temporary folder."""
        ref = task.input("ingest")
        uri = ref.uri
        fmt = str(task.asset.get("format") or "").lower().lstrip(".")
        name = posixpath.basename(uri.split("://", 1)[-1])
        if not fmt:
            fmt = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        with contextlib.ExitStack() as stack:
            rel = ctx.store.rel(uri)
            if not rel.startswith(".."):
                local = str(stack.enter_context(ctx.store.local_copy(rel)))
            elif "://" not in uri or uri.startswith("file://"):
                local = uri.split("://", 1)[-1]
            else:
                d = stack.enter_context(tempfile.TemporaryDirectory(prefix="trellis-raw-"))
                local = os.path.join(d, name)
                with fsspec.open(uri, "rb") as src, open(local, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            hint = task.asset.get("main_file") or task.asset.get("package_entry")
            yield stack.enter_context(resolve_asset(local, fmt, hint))


class RenderStage(BlenderStage):
    """Feature renders in the reference set-up (DATA_FORMATS.md §3): 150 views, 512 px, Cycles 128 spp.

    `engine` picks the renderer and is a param, so renders of different engines never share a
    fingerprint. Blender engines (CYCLES, EEVEE, WORKBENCH) import the raw asset themselves
    (upstream `ingest`); MITSUBA renders the canonical form of `render.canonical` (upstream
    `canonical`), on `device` CUDA (a GPU node; the stage then asks for `config.num_gpus`, default
    0.25 of a GPU, so it shares the GPU with model stages) or CPU (the LLVM backend). Both write the
    same files: PNG views, transforms.json (same cameras, scale and offset), mesh.ply.
    """

    name = "render"
    version = "2"
    """2: cameras are seeded by (asset, stage, num_views) only, so every engine and quality setting
    of an asset sees the same cameras; transforms.json holds the planned matrices (Blender's own are
    checked against them)."""

    layout_dir: ClassVar = staticmethod(layout.renders)
    save_mesh: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Params:
        engine: str = "CYCLES"
        samples: int = 128
        resolution: int = cameras.FEATURE_RESOLUTION
        num_views: int = cameras.FEATURE_VIEWS
        denoise: bool = True
        pixel_filter: str = "BLACKMAN_HARRIS"
        filter_width: float = 1.0
        view_transform: str = "Filmic"
        device: str = "CPU"
        passes: tuple[str, ...] = ()

        def __post_init__(self) -> None:
            object.__setattr__(self, "passes", tuple(self.passes or ()))
            object.__setattr__(self, "engine", self.engine.upper())
            object.__setattr__(self, "device", self.device.upper())
            object.__setattr__(self, "pixel_filter", self.pixel_filter.upper())
            if self.engine not in ENGINES:
                raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
            if self.pixel_filter not in PIXEL_FILTERS:
                raise ValueError(f"pixel_filter must be one of {PIXEL_FILTERS}")
            if set(self.passes) - set(PASSES):
                raise ValueError(f"passes must be among {PASSES}")
            if self.num_views <= 0 or self.resolution <= 0 or self.samples <= 0:
                raise ValueError("num_views, resolution and samples must be positive")
            if self.engine == "MITSUBA":
                if self.device not in MITSUBA_DEVICES:
                    raise ValueError(f"MITSUBA device must be one of {sorted(MITSUBA_DEVICES)}, got {self.device!r}")
                if self.denoise and MITSUBA_DEVICES[self.device] != "cuda":
                    raise ValueError("MITSUBA denoising uses the OptiX denoiser: device CUDA, or denoise: false")
                if self.passes:
                    raise ValueError("MITSUBA renders no extra passes")
                if self.view_transform != "Filmic":
                    raise ValueError("MITSUBA reproduces the Filmic view transform only (render/data/filmic_lut.npz)")

    def __init__(self, params=None, config=None, **kw) -> None:
        super().__init__(params, config, **kw)
        self.mitsuba = None  # the in-process Mitsuba engine (MITSUBA only), made by setup()
        if self.params.engine == "MITSUBA":
            if kw.get("upstream") is None:
                self.upstream = ("canonical",)
            gpu = MITSUBA_DEVICES[self.params.device] == "cuda"
            if gpu and not (self.config.get("resources") or {}).get("num_gpus"):
                self.resources = dataclasses.replace(self.resources, num_gpus=float(self.config.get("num_gpus", 0.25)))

    @property
    def sampling_seed(self) -> int:
        """The path tracer's sampling seed: another seed is another noise realisation of the same
        image (how the parity benchmark measures Cycles' own noise floor), so it is config."""
        return int(self.config.get("seed", 0))

    # lifecycle -----------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.params.engine != "MITSUBA":
            super().setup()
        elif self.mitsuba is None:
            from render import mitsuba_render  # noqa: PLC0415

            self.mitsuba = mitsuba_render.engine_for(self.params)

    def close(self) -> None:
        super().close()
        self.mitsuba = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["mitsuba"] = None
        return state

    # cameras -------------------------------------------------------------------------------------
    def seed(self, sha256: str) -> int:
        return cameras.asset_seed(sha256, self.name, {"num_views": self.params.num_views})

    def plan(self, sha256: str) -> cameras.CameraPlan:
        return cameras.feature_plan(self.params.num_views, seed=self.seed(sha256))

    def transforms(self, plan: cameras.CameraPlan, which: Sequence[int], scale: float, offset: Sequence[float],
                   settings: dict[str, Any]) -> dict[str, Any]:
        """transforms.json of views `which` of `plan` (one writer for every engine)."""
        extra = {
            "seed": plan.seed,
            **plan.draws,
            "normalization": {"scale": scale, "offset": list(offset),
                              "map": "p_world = scale * p_source + offset (exact: all roots under one empty)"},
            "settings": settings,
            "stage": self.name,
            "stage_version": self.version,
        }
        frames = [(cameras.view_name(i), plan.views[i].fov, plan.views[i].c2w) for i in which]
        return cameras.transforms_dict(frames, scale, offset, extra)

    # work ----------------------------------------------------------------------------------------
    def job(self, local: str, fmt: str, out_dir: str, plan: cameras.CameraPlan,
            views: Sequence[int] | None = None) -> dict[str, Any]:
        p = self.params
        which = range(len(plan.views)) if views is None else views
        return {
            "kind": "render",
            "input": local,
            "format": fmt,
            "out_dir": out_dir,
            "views": [{"name": cameras.view_name(i), "position": plan.views[i].position.tolist(),
                       "fov": plan.views[i].fov} for i in which],
            "engine": p.engine,
            "samples": p.samples,
            "resolution": p.resolution,
            "denoise": p.denoise,
            "pixel_filter": p.pixel_filter,
            "filter_width": p.filter_width,
            "view_transform": p.view_transform,
            "device": p.device,
            "passes": list(p.passes),
            "save_mesh": self.save_mesh,
            "threads": self.threads,
            "seed": self.sampling_seed,
            "persistent_data": bool(self.config.get("persistent_data", True)),
        }

    def render_to(self, local: str, fmt: str, sha256: str, out_dir: str,
                  views: Sequence[int] | None = None) -> dict[str, Any]:
        """Render with Blender into a local folder and write transforms.json; returns the metrics.

        `views` renders only those indices of the camera plan (benchmarks); the frames keep their
        plan names, so a subset's transforms.json lists the same cameras as the full render's."""
        if self.params.engine == "MITSUBA":
            raise TypeError("MITSUBA renders the canonical form: use render_canonical()")
        if self.worker is None:
            self.setup()
        plan = self.plan(sha256)
        which = list(range(len(plan.views))) if views is None else [int(i) for i in views]
        out_dir = os.path.abspath(out_dir)
        reply = self.worker.run(self.job(os.path.abspath(local), fmt, out_dir, plan, which), self.job_timeout_s)
        res = reply.result
        mats = np.asarray(res["matrices"], dtype=np.float64)
        planned = np.stack([plan.views[i].c2w for i in which])
        dev = float(np.abs(mats - planned).max())
        if dev > 1e-4:
            raise CameraMismatch(f"Blender camera differs from the plan by {dev:.3g}", log_text=reply.log_text)
        tj = self.transforms(plan, which, res["scale"], res["offset"], res["settings"])
        cameras.write_transforms(os.path.join(out_dir, "transforms.json"), tj)
        t = res["timings"]
        n = len(which)
        metrics: dict[str, Any] = {
            "n_views": n,
            "seconds_per_view": t["render_s"] / n,
            "first_view_s": t["view_s"][0] if t["view_s"] else None,
            "import_s": t["import_s"],
            "blender_s": t["total_s"],
            "job_s": reply.seconds,
            "cold_start": reply.started_child,
            "scale": res["scale"],
            "camera_max_dev": dev,
            "blender_log_warnings": log_warnings(reply.log_text),
            **res["signals"],
            "settings": res["settings"],
        }
        return metrics

    def render_canonical(self, files: dict[str, Path], sha256: str, out_dir: str,
                         views: Sequence[int] | None = None) -> dict[str, Any]:
        """MITSUBA: render the canonical form (local paths of `render.canonical.FILES`) into out_dir."""
        from render import mitsuba_render  # noqa: PLC0415

        self.setup()
        plan = self.plan(sha256)
        which = list(range(len(plan.views))) if views is None else [int(i) for i in views]
        return mitsuba_render.render_canonical(self, files, plan, which, Path(out_dir))

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        rel_dir = self.layout_dir(task.sha256)
        with tempfile.TemporaryDirectory(prefix="trellis-render-") as out:
            if self.params.engine == "MITSUBA":
                from render.canonical import local_canonical  # noqa: PLC0415

                src = task.input("canonical")
                with local_canonical(ctx.store, src.uri) as files:
                    metrics = self.render_canonical(files, task.sha256, out)
                metrics["format"] = (src.metrics or {}).get("format", task.asset.get("format"))
            else:
                with self._asset_file(task, ctx) as (local, fmt):
                    metrics = self.render_to(local, fmt, task.sha256, out)
                metrics["format"] = fmt
            ctx.store.delete(rel_dir)  # no stale views from an earlier render with other params
            nbytes = ctx.store.publish_dir(out, rel_dir, last=("transforms.json",))
        return StageResult(uri=ctx.store.uri(rel_dir), bytes=nbytes, metrics=metrics)


class RenderCondStage(RenderStage):
    """Conditioning renders (§3.2): 24 views, 1024 px, per-view radius with the FOV that frames the
    unit cube's bounding sphere; no mesh.ply."""

    name = "render_cond"
    timeout_s = 3600.0
    layout_dir: ClassVar = staticmethod(layout.renders_cond)
    save_mesh: ClassVar[bool] = False

    @dataclass(frozen=True)
    class Params(RenderStage.Params):
        resolution: int = cameras.COND_RESOLUTION
        num_views: int = cameras.COND_VIEWS

    def plan(self, sha256: str) -> cameras.CameraPlan:
        return cameras.cond_plan(self.params.num_views, seed=self.seed(sha256))

