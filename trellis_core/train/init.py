"""Initialisation for training from scratch (MODELS.md 4).

Linear layers: Xavier-uniform weights, zero bias; timestep-MLP weights N(0, 0.02); every adaLN
output linear zero; the second conv of every res-block and subdivision block zero; for the flow
models (``zero_out=True``) the final ``out_layer`` zero as well, so a fresh denoiser predicts v = 0.
"""
from __future__ import annotations

import torch
from torch import nn

from ..modules.blocks import ResBlock3d, SparseResBlock3d, SparseSubdivideBlock3d
from ..modules.layers import TimestepEmbedder

__all__ = ["initialize_weights"]


def _zero(m: nn.Module) -> None:
    for p in m.parameters():
        nn.init.zeros_(p)


@torch.no_grad()
def initialize_weights(model: nn.Module, zero_out: bool = True) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, TimestepEmbedder):
            nn.init.normal_(m.mlp[0].weight, std=0.02)
            nn.init.normal_(m.mlp[2].weight, std=0.02)
        if hasattr(m, "adaLN_modulation") and isinstance(m.adaLN_modulation, nn.Sequential):
            _zero(m.adaLN_modulation[-1])
        if isinstance(m, (ResBlock3d, SparseResBlock3d)):
            _zero(m.conv2)
        if isinstance(m, SparseSubdivideBlock3d):
            _zero(m.out_layers[-1])
    if zero_out and hasattr(model, "out_layer"):
        _zero(model.out_layer)
    return model
