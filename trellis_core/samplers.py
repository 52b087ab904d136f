"""Rectified-flow Euler samplers (MODELS.md 7).

Convention: ``x_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) eps``; t = 1 is noise; the model
receives ``1000 t``. Works for dense tensors and :class:`SparseTensor` alike.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .sparse.tensor import SparseTensor

__all__ = ["FlowEulerSampler", "FlowEulerCfgSampler", "FlowEulerGuidanceIntervalSampler", "SAMPLERS",
           "build_sampler", "timesteps"]


def timesteps(steps: int, rescale_t: float = 1.0) -> List[float]:
    """``linspace(1, 0, steps + 1)`` warped by ``rescale_t t / (1 + (rescale_t - 1) t)``."""
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    t = rescale_t * t / (1 + (rescale_t - 1) * t)
    return t.tolist()


def _feats(x):
    return x.feats if isinstance(x, SparseTensor) else x


def _like(x, f):
    return x.replace(f) if isinstance(x, SparseTensor) else f


def _batch(x) -> int:
    return x.batch_size if isinstance(x, SparseTensor) else x.shape[0]


def _expand_cond(cond, b):
    if isinstance(cond, torch.Tensor) and cond.shape[0] == 1 and b > 1:
        return cond.expand(b, *cond.shape[1:])
    return cond


@dataclass
class SampleResult:
    samples: Any
    pred_x_0: List[Any] = field(default_factory=list)
    pred_x_t: List[Any] = field(default_factory=list)


class FlowEulerSampler:
    def __init__(self, sigma_min: float = 1e-5):
        self.sigma_min = sigma_min

    def _v(self, model, x, t: float, cond, **kw):
        tt = torch.full((_batch(x),), 1000.0 * t, dtype=torch.float32, device=_feats(x).device)
        return model(x, tt, _expand_cond(cond, _batch(x)), **kw)

    def velocity(self, model, x, t: float, cond, **kw):
        return self._v(model, x, t, cond, **kw)

    def pred_x0(self, x, t: float, v):
        s = self.sigma_min
        return _like(x, (1 - s) * _feats(x) - (s + (1 - s) * t) * _feats(v))

    @torch.no_grad()
    def sample(self, model, noise, cond=None, steps: int = 50, rescale_t: float = 1.0, verbose: bool = False,
               keep_trajectory: bool = False, **kw) -> SampleResult:
        ts = timesteps(steps, rescale_t)
        x = noise
        res = SampleResult(samples=None)
        it = zip(ts[:-1], ts[1:])
        if verbose:
            from tqdm import tqdm
            it = tqdm(list(it), desc="Sampling")
        for t, t_prev in it:
            v = self.velocity(model, x, t, cond, **kw)
            if keep_trajectory:
                res.pred_x_0.append(self.pred_x0(x, t, v))
            x = _like(x, _feats(x) - (t - t_prev) * _feats(v))
            if keep_trajectory:
                res.pred_x_t.append(x)
        res.samples = x
        return res


class FlowEulerCfgSampler(FlowEulerSampler):
    """Classifier-free guidance: ``(1 + w) v_cond - w v_uncond``, two separate passes."""

    def velocity(self, model, x, t, cond, neg_cond=None, cfg_strength: float = 3.0, **kw):
        v = self._v(model, x, t, cond, **kw)
        if neg_cond is None or cfg_strength == 0:
            return v
        vn = self._v(model, x, t, neg_cond, **kw)
        return _like(x, (1 + cfg_strength) * _feats(v) - cfg_strength * _feats(vn))

    def sample(self, model, noise, cond=None, neg_cond=None, steps: int = 50, rescale_t: float = 1.0,
               cfg_strength: float = 3.0, **kw):
        return super().sample(model, noise, cond, steps, rescale_t, neg_cond=neg_cond,
                              cfg_strength=cfg_strength, **kw)


class FlowEulerGuidanceIntervalSampler(FlowEulerCfgSampler):
    """CFG only while ``cfg_interval[0] <= t <= cfg_interval[1]`` (rescaled t in [0, 1])."""

    def velocity(self, model, x, t, cond, neg_cond=None, cfg_strength: float = 3.0,
                 cfg_interval: Tuple[float, float] = (0.0, 1.0), **kw):
        if cfg_interval[0] <= t <= cfg_interval[1]:
            return super().velocity(model, x, t, cond, neg_cond=neg_cond, cfg_strength=cfg_strength, **kw)
        return self._v(model, x, t, cond, **kw)

    def sample(self, model, noise, cond=None, neg_cond=None, steps: int = 50, rescale_t: float = 1.0,
               cfg_strength: float = 3.0, cfg_interval: Sequence[float] = (0.0, 1.0), **kw):
        return FlowEulerSampler.sample(self, model, noise, cond, steps, rescale_t, neg_cond=neg_cond,
                                       cfg_strength=cfg_strength, cfg_interval=tuple(cfg_interval), **kw)


SAMPLERS = {c.__name__: c for c in (FlowEulerSampler, FlowEulerCfgSampler, FlowEulerGuidanceIntervalSampler)}


def build_sampler(spec: Dict[str, Any]):
    """From a pipeline.json sampler block ``{"name", "args", "params"}`` -> (sampler, params)."""
    try:
        cls = SAMPLERS[spec["name"]]
    except KeyError:
        raise KeyError(f"unknown sampler {spec.get('name')!r}; known: {sorted(SAMPLERS)}") from None
    return cls(**spec.get("args", {})), dict(spec.get("params", {}))
