"""Sparse-structure VAE: dense 3-D conv encoder / decoder (MODELS.md 3.1, 3.2)."""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from ..modules.blocks import DownsampleBlock3d, ResBlock3d, UpsampleBlock3d
from ..modules.norm import ChannelLayerNorm32, GroupNorm32
from ..registry import TrellisModel, register_model

__all__ = ["SparseStructureEncoder", "SparseStructureDecoder"]


def _out_norm(norm_type: str, channels: int) -> nn.Module:
    if norm_type == "layer":
        return ChannelLayerNorm32(channels)
    if norm_type == "group":
        return GroupNorm32(32, channels)
    raise ValueError(f"unknown norm_type {norm_type!r}")


@register_model()
class SparseStructureEncoder(TrellisModel):
    """``(B, in, 64, 64, 64)`` occupancy -> ``(B, latent, 16, 16, 16)`` latent."""

    _torso = ("blocks", "middle_block")

    def __init__(self, in_channels: int, latent_channels: int, num_res_blocks: int, channels: List[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.use_fp16 = use_fp16
        self.input_layer = nn.Conv3d(in_channels, channels[0], 3, padding=1)
        blocks = []
        for i, ch in enumerate(channels):
            blocks.extend(ResBlock3d(ch, ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                blocks.append(DownsampleBlock3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[-1], channels[-1])
                                            for _ in range(num_res_blocks_middle)])
        self.out_layer = nn.Sequential(_out_norm(norm_type, channels[-1]), nn.SiLU(),
                                       nn.Conv3d(channels[-1], latent_channels * 2, 3, padding=1))
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor, sample_posterior: bool = False, return_raw: bool = False):
        h = self.input_layer(x).type(self.dtype)
        for block in self.blocks:
            h = block(h)
        h = self.middle_block(h)
        h = self.out_layer(h.type(x.dtype))
        mean, logvar = h.chunk(2, dim=1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample_posterior else mean
        return (z, mean, logvar) if return_raw else z


@register_model()
class SparseStructureDecoder(TrellisModel):
    """``(B, latent, 16, 16, 16)`` latent -> ``(B, out, 64, 64, 64)`` occupancy logits."""

    _torso = ("blocks", "middle_block")

    def __init__(self, out_channels: int, latent_channels: int, num_res_blocks: int, channels: List[int],
                 num_res_blocks_middle: int = 2, norm_type: str = "layer", use_fp16: bool = False):
        super().__init__()
        self.out_channels, self.latent_channels = out_channels, latent_channels
        self.use_fp16 = use_fp16
        self.input_layer = nn.Conv3d(latent_channels, channels[0], 3, padding=1)
        self.middle_block = nn.Sequential(*[ResBlock3d(channels[0], channels[0])
                                            for _ in range(num_res_blocks_middle)])
        blocks = []
        for i, ch in enumerate(channels):
            blocks.extend(ResBlock3d(ch, ch) for _ in range(num_res_blocks))
            if i < len(channels) - 1:
                blocks.append(UpsampleBlock3d(ch, channels[i + 1]))
        self.blocks = nn.ModuleList(blocks)
        self.out_layer = nn.Sequential(_out_norm(norm_type, channels[-1]), nn.SiLU(),
                                       nn.Conv3d(channels[-1], out_channels, 3, padding=1))
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_layer(x).type(self.dtype)
        h = self.middle_block(h)
        for block in self.blocks:
            h = block(h)
        return self.out_layer(h.type(x.dtype))
