"""Tiny configurations of every model class: for tests, demos and dry runs on CPU.

``tiny_model(name, seed)`` builds a seeded, randomly initialised instance (NOT pretrained). Shapes are
chosen so the tiny models chain like the released ones: SS decoder latent 4³ -> 16³ occupancy,
SS flow on 4³ x 8, SLat models on a 16³ grid with 8 latent channels, condition width 16."""
from __future__ import annotations

import copy
from typing import Any, Dict

import torch

from ..registry import get_model_class

__all__ = ["TINY_CONFIGS", "tiny_model"]

_GS = {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
       "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 4, "2d_filter_kernel_size": 0.1,
       "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus"}

TINY_CONFIGS: Dict[str, Dict[str, Any]] = {
    "SparseStructureEncoder": dict(in_channels=1, latent_channels=8, num_res_blocks=1, channels=[8, 8, 8],
                                   num_res_blocks_middle=1),
    "SparseStructureDecoder": dict(out_channels=1, latent_channels=8, num_res_blocks=1, channels=[8, 8, 8],
                                   num_res_blocks_middle=1),
    "SparseStructureFlowModel": dict(resolution=4, in_channels=8, out_channels=8, model_channels=32,
                                     cond_channels=16, num_blocks=1, num_heads=2, patch_size=1, qk_rms_norm=True),
    "SLatFlowModel": dict(resolution=16, in_channels=8, out_channels=8, model_channels=32, cond_channels=16,
                          num_blocks=1, num_heads=2, patch_size=2, io_block_channels=[16], qk_rms_norm=True),
    "SLatEncoder": dict(resolution=16, in_channels=12, model_channels=32, latent_channels=8, num_blocks=2,
                        num_heads=2),
    "SLatGaussianDecoder": dict(resolution=16, model_channels=32, latent_channels=8, num_blocks=1, num_heads=2,
                                representation_config=_GS),
    "SLatRadianceFieldDecoder": dict(resolution=16, model_channels=32, latent_channels=8, num_blocks=1,
                                     num_heads=2, representation_config={"rank": 4, "dim": 2}),
    "SLatMeshDecoder": dict(resolution=16, model_channels=256, latent_channels=8, num_blocks=1, num_heads=4,
                            representation_config={"use_color": True}),
}


def tiny_model(name: str, seed: int = 0, **overrides):
    """A seeded tiny instance of model class ``name`` in eval mode (random weights, not pretrained)."""
    kwargs = copy.deepcopy(TINY_CONFIGS[name])
    kwargs.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_model_class(name)(**kwargs).eval()
