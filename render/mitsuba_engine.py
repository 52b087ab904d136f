"""The GPU render engine: Mitsuba 3 renders the canonical GLB with the reference cameras and scene.

In-process API (what the render stage uses, and what a fused render -> DINOv2 path calls)::

    from render import mitsuba_engine as me
    eng = me.MitsubaEngine(device="cuda")             # or "llvm" (CPU); picks the Mitsuba variant
    loaded = eng.load("canonical/<sha>/model.glb")    # mi.Scene + notes; reuse it for many batches
    batch = eng.render(loaded, c2ws, fovs, resolution=512, spp=32, seed=0)
    batch.rgba      # torch.float32 (V, H, W, 4), premultiplied scene-linear, on the GPU for cuda
    display = me.to_display(batch.rgba)               # (V, H, W, 4) straight display RGBA in [0, 1]
    u8 = me.quantize(display)                         # torch.uint8, exactly what the PNGs hold

`render` returns the views as a torch tensor on the renderer's device before any PNG encoding,
so a consumer on the same GPU (e.g. the feature stage's DINOv2) can take `to_display(...)` (or the
uint8 tensor) directly, without a trip through files. `batch.timings` splits the cost into
upload (scene build: meshes, textures, BVH), render (the launches, synchronised), and denoise.

Device and variant: `cuda` -> `cuda_ad_rgb` (OptiX from the driver; the H200 has no RT cores, so
traversal runs on CUDA cores), `llvm` -> `llvm_ad_rgb` on the CPU. The LLVM backend needs a recent
libLLVM: `DRJIT_LIBLLVM_PATH` is set to Debian's libLLVM-19 when unset (bookworm's 14/15 crash it).
Dr.Jit shares the process's primary CUDA context with torch, so one actor holds one context.

Denoising (optional): Mitsuba's OptiX denoiser (driver-provided, cuda only) with albedo and
normal guides written by the integrator, per view.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catalogs.stage import StageError

LIBLLVM = "/usr/lib/x86_64-linux-gnu/libLLVM-19.so"
VARIANTS = {"cuda": "cuda_ad_rgb", "llvm": "llvm_ad_rgb"}
MAX_SAMPLES_PER_LAUNCH = 1 << 31
"""Views per launch are chosen so a launch stays below this many samples (Mitsuba's limit is 2^32)."""


class EngineUnavailable(StageError):
    """Mitsuba (or the requested backend / denoiser) cannot run on this node: worth another node."""

    error_type = "device_unavailable"
    retryable = True


def _mi(device: str):
    """Import Mitsuba with the variant of `device`; typed failure when the backend is missing."""
    if device not in VARIANTS:
        raise ValueError(f"device must be one of {sorted(VARIANTS)}, got {device!r}")
    if device == "llvm" and not os.environ.get("DRJIT_LIBLLVM_PATH") and os.path.exists(LIBLLVM):
        os.environ["DRJIT_LIBLLVM_PATH"] = LIBLLVM
    try:
        import mitsuba as mi
    except ImportError as exc:
        raise EngineUnavailable(f"mitsuba is not installed: {exc}") from exc
    try:
        mi.set_variant(VARIANTS[device])
    except (ImportError, RuntimeError, AttributeError) as exc:
        raise EngineUnavailable(f"Mitsuba variant {VARIANTS[device]} unavailable: {exc}") from exc
    from render import mitsuba_integrator

    mitsuba_integrator.register()
    return mi


@dataclass
class Loaded:
    scene: Any
    notes: list[str]
    upload_s: float
    """read_s + build_s."""
    n_parts: int
    read_s: float = 0.0
    """Reading the GLB into numpy (decode textures)."""
    build_s: float = 0.0
    """Building the Mitsuba scene: meshes and textures onto the device, BVH."""


@dataclass
class Batch:
    rgba: torch.Tensor
    """(V, H, W, 4) premultiplied scene-linear RGBA, float32, on the engine's device."""
    timings: dict[str, float] = field(default_factory=dict)
    launches: int = 0


@dataclass(frozen=True)
class Settings:
    """What shapes the image (the render stage's params map onto it)."""

    pixel_filter: str = "BLACKMAN_HARRIS"
    filter_width: float = 1.0
    denoise: bool = False
    sampler: str = "multijitter"
    diffuse_bounces: int = 1
    glossy_bounces: int = 1
    transparent_bounces: int = 3
    clamp_indirect: float = 10.0


class MitsubaEngine:
    """One Mitsuba variant in this process; scenes are loaded per asset, sensors per batch."""

    def __init__(self, device: str = "cuda", settings: Settings | None = None) -> None:
        self.device = device
        self.settings = settings or Settings()
        self.mi = _mi(device)
        import drjit as dr

        self.dr = dr
        if self.settings.denoise and device != "cuda":
            raise EngineUnavailable("denoising uses the OptiX denoiser, which needs the cuda device")
        self._denoisers: dict[int, Any] = {}

    @property
    def torch_device(self) -> str:
        return "cuda" if self.device == "cuda" else "cpu"

    def integrator(self) -> dict[str, Any]:
        s = self.settings
        from render.mitsuba_integrator import NAME

        return {"type": NAME, "diffuse_bounces": s.diffuse_bounces, "glossy_bounces": s.glossy_bounces,
                "transparent_bounces": s.transparent_bounces, "clamp_indirect": s.clamp_indirect,
                "aovs": s.denoise}

    def load(self, glb: str | Path, world_rgb: Sequence[float] | None = None) -> Loaded:
        """Read the canonical GLB and build the Mitsuba scene (meshes, textures, lights, BVH);
        `world_rgb` is the world's radiance (canonical.json's world_color; default the factory grey)."""
        from render import gltf_read, mitsuba_scene
        from render.scene_spec import WORLD_GREY

        t0 = time.perf_counter()
        asset = gltf_read.read_glb(glb)
        t1 = time.perf_counter()
        scene, notes = mitsuba_scene.scene(self.mi, asset, self.integrator(), world_rgb or (WORLD_GREY,) * 3)
        self.dr.eval()
        self.dr.sync_thread()
        t2 = time.perf_counter()
        return Loaded(scene, notes, t2 - t0, len(asset.parts), read_s=t1 - t0, build_s=t2 - t1)

    def views_per_launch(self, n: int, resolution: int, spp: int) -> int:
        per_view = resolution * resolution * spp
        return max(1, min(n, MAX_SAMPLES_PER_LAUNCH // max(1, per_view)))

    def render(self, loaded: Loaded, c2ws: Sequence[np.ndarray], fovs: Sequence[float], *, resolution: int,
               spp: int, seed: int = 0, views_per_launch: int | None = None) -> Batch:
        """Render every view; returns the premultiplied linear RGBA batch as a torch tensor."""
        from render import mitsuba_scene

        mi, dr, s = self.mi, self.dr, self.settings
        n = len(c2ws)
        step = views_per_launch or self.views_per_launch(n, resolution, spp)
        integrator = loaded.scene.integrator()
        out = torch.empty((n, resolution, resolution, 4), dtype=torch.float32, device=self.torch_device)
        t_render = t_denoise = 0.0
        launches = 0
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            t0 = time.perf_counter()
            sensor = mitsuba_scene.batch_sensor(mi, c2ws[lo:hi], fovs[lo:hi], resolution, spp, seed + launches,
                                                s.pixel_filter, s.filter_width, s.sampler)
            img = mi.render(loaded.scene, sensor=sensor, integrator=integrator, spp=spp, seed=seed + launches)
            dr.eval(img)
            dr.sync_thread()
            t_render += time.perf_counter() - t0
            launches += 1
            t0 = time.perf_counter()
            arr = img.torch() if self.device == "cuda" else torch.from_numpy(np.array(img))
            v = hi - lo
            arr = arr.reshape(resolution, v, resolution, -1).permute(1, 0, 2, 3)
            if s.denoise:
                arr = self._denoise(arr, c2ws[lo:hi], resolution)
            out[lo:hi] = arr[..., :4]
            if self.device == "cuda":
                torch.cuda.synchronize()
            t_denoise += time.perf_counter() - t0
        return Batch(out, {"render_s": t_render, "denoise_s": t_denoise if s.denoise else 0.0}, launches)

    def _denoise(self, views: torch.Tensor, c2ws: Sequence[np.ndarray], resolution: int) -> torch.Tensor:
        """OptiX denoiser per view, guided by the integrator's albedo and (camera-space) normals."""
        mi = self.mi
        den = self._denoisers.get(resolution)
        if den is None:
            den = mi.OptixDenoiser([resolution, resolution], albedo=True, normals=True, denoise_alpha=False)
            self._denoisers[resolution] = den
        from render.mitsuba_scene import mitsuba_to_world

        out = views.clone()
        for i in range(views.shape[0]):
            v = views[i].contiguous()
            noisy = mi.TensorXf(v[..., :4])
            albedo = mi.TensorXf(v[..., 4:7].contiguous())
            normals = mi.TensorXf(v[..., 7:10].contiguous())
            to_sensor = mitsuba_to_world(mi, c2ws[i]).inverse()
            res = den(noisy, albedo=albedo, normals=normals, to_sensor=to_sensor)
            out[i, ..., :4] = res.torch()
        return out


# -- display and bytes ---------------------------------------------------------------------------------
def to_display(rgba: torch.Tensor) -> torch.Tensor:
    """Premultiplied scene-linear RGBA -> straight display RGBA (Blender's Filmic, measured LUT)."""
    from render.tonemap import filmic_rgba

    return filmic_rgba(rgba)


def quantize(display: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> uint8 by rounding to nearest, as Blender writes 8-bit PNGs (without its dither)."""
    return (display.clamp(0.0, 1.0) * 255.0 + 0.5).floor().to(torch.uint8)
