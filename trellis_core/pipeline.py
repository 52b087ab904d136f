"""Generation pipelines assembled from ``pipeline.json`` (MODELS.md 1.4, 8).

The condition encoders (DINOv2 for images, CLIP for text) are not part of this module: callers
pass ``cond`` / ``neg_cond`` tensors (see MODELS.md 5 and 6 for how they are made)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import torch

from .checkpoint import from_pretrained
from .locations import HubDownloadError, resolve
from .samplers import build_sampler
from .sparse.tensor import SparseTensor

__all__ = ["TrellisPipeline", "Pipeline"]


def _pipeline_json(path: str) -> tuple:
    local = os.path.join(path, "pipeline.json")
    if os.path.exists(local):
        return local, path
    if os.path.isdir(path):
        raise FileNotFoundError(f"{path} has no pipeline.json")
    if path.count("/") != 1:
        raise FileNotFoundError(f"no pipeline at {path!r}: expected a folder with pipeline.json or a Hub repo id")
    return str(resolve(f"{path}/pipeline.json", "file").path), path


class TrellisPipeline:
    """Models by role, samplers and SLat normalisation of a released (or our own) pipeline."""

    def __init__(self, models: Dict[str, torch.nn.Module], sparse_structure_sampler=None, slat_sampler=None,
                 sparse_structure_sampler_params=None, slat_sampler_params=None,
                 slat_normalization: Optional[Dict[str, List[float]]] = None, name: str = "TrellisPipeline",
                 args: Optional[Dict[str, Any]] = None):
        self.models = models
        self.sparse_structure_sampler = sparse_structure_sampler
        self.slat_sampler = slat_sampler
        self.sparse_structure_sampler_params = sparse_structure_sampler_params or {}
        self.slat_sampler_params = slat_sampler_params or {}
        self.slat_normalization = slat_normalization
        self.name, self.args = name, args or {}

    @classmethod
    def from_pretrained(cls, path: str, roles: Optional[List[str]] = None, device=None) -> "TrellisPipeline":
        """Load ``<path>/pipeline.json`` (folder or Hub repo id). Each model value is tried as
        ``<root>/<value>`` and, if that fails for any reason, as a path of its own."""
        pj, root = _pipeline_json(path)
        with open(pj) as f:
            spec = json.load(f)
        args = spec.get("args", {})
        models = {}
        for role, value in args.get("models", {}).items():
            if roles is not None and role not in roles:
                continue
            try:
                models[role] = from_pretrained(f"{root}/{value}", device=device)
            except Exception as first:
                try:
                    models[role] = from_pretrained(value, device=device)
                except Exception as second:
                    raise HubDownloadError(f"could not load model {role!r}: {root}/{value}: {first}; "
                                           f"{value}: {second}") from second
        ss, ssp = build_sampler(args["sparse_structure_sampler"]) if "sparse_structure_sampler" in args else (None, {})
        sl, slp = build_sampler(args["slat_sampler"]) if "slat_sampler" in args else (None, {})
        return cls(models, ss, sl, ssp, slp, args.get("slat_normalization"), spec.get("name", cls.__name__), args)

    @property
    def device(self):
        for m in self.models.values():
            return next(m.parameters()).device
        return torch.device("cpu")

    def to(self, device):
        for m in self.models.values():
            m.to(device)
        return self

    # ------------------------------------------------------------------ generation (MODELS.md 8)
    @torch.no_grad()
    def sample_sparse_structure(self, cond, neg_cond, num_samples: int = 1, generator=None, **params):
        model = self.models["sparse_structure_flow_model"]
        reso = model.resolution
        noise = torch.randn(num_samples, model.in_channels, reso, reso, reso, generator=generator).to(self.device)
        p = {**self.sparse_structure_sampler_params, **params}
        z = self.sparse_structure_sampler.sample(model, noise, cond, neg_cond=neg_cond, **p).samples
        logits = self.models["sparse_structure_decoder"](z)
        coords = torch.argwhere(logits > 0)[:, [0, 2, 3, 4]].int()
        return coords

    @torch.no_grad()
    def sample_slat(self, cond, neg_cond, coords: torch.Tensor, generator=None, **params) -> SparseTensor:
        model = self.models["slat_flow_model"]
        noise = SparseTensor(torch.randn(coords.shape[0], model.in_channels, generator=generator).to(self.device),
                             coords)
        p = {**self.slat_sampler_params, **params}
        slat = self.slat_sampler.sample(model, noise, cond, neg_cond=neg_cond, **p).samples
        if self.slat_normalization:
            std = torch.tensor(self.slat_normalization["std"], device=slat.device)[None]
            mean = torch.tensor(self.slat_normalization["mean"], device=slat.device)[None]
            slat = slat * std + mean
        return slat

    @torch.no_grad()
    def decode_slat(self, slat: SparseTensor, formats=("mesh", "gaussian", "radiance_field")):
        role = {"mesh": "slat_decoder_mesh", "gaussian": "slat_decoder_gs", "radiance_field": "slat_decoder_rf"}
        return {f: self.models[role[f]](slat) for f in formats if role[f] in self.models}

    @torch.no_grad()
    def run_from_cond(self, cond, neg_cond, num_samples: int = 1, seed: int = 42,
                      formats=("mesh", "gaussian", "radiance_field"), ss_params=None, slat_params=None):
        """Steps 2-6 of MODELS.md 8 given precomputed conditions (noise from the seeded CPU generator)."""
        torch.manual_seed(seed)
        coords = self.sample_sparse_structure(cond, neg_cond, num_samples, **(ss_params or {}))
        slat = self.sample_slat(cond, neg_cond, coords, **(slat_params or {}))
        return self.decode_slat(slat, formats)


Pipeline = TrellisPipeline
