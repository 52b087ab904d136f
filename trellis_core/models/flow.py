"""Flow-matching denoisers: dense sparse-structure DiT and sparse SLat DiT (MODELS.md 3.8, 3.9)."""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.blocks import ModulatedSparseTransformerCrossBlock, ModulatedTransformerCrossBlock, SparseResBlock3d
from ..modules.layers import AbsolutePositionEmbedder, SparseLinear, TimestepEmbedder
from ..registry import TrellisModel, register_model
from ..sparse.tensor import SparseTensor

__all__ = ["SparseStructureFlowModel", "SLatFlowModel", "patchify", "unpatchify"]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` -> ``(B, C p^3, X/p, Y/p, Z/p)``, channel ``c p^3 + (i p + j) p + k``."""
    if p == 1:
        return x
    B, C, X, Y, Z = x.shape
    x = x.reshape(B, C, X // p, p, Y // p, p, Z // p, p).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(B, C * p ** 3, X // p, Y // p, Z // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    if p == 1:
        return x
    B, C, X, Y, Z = x.shape
    c = C // p ** 3
    x = x.reshape(B, c, p, p, p, X, Y, Z).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(B, c, X * p, Y * p, Z * p)


@register_model()
class SparseStructureFlowModel(TrellisModel):
    """Velocity of the 16³ sparse-structure latent, conditioned on tokens by cross-attention."""

    _torso = ("blocks",)

    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: Optional[int] = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, patch_size: int = 2, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, share_mod: bool = False, qk_rms_norm: bool = False,
                 qk_rms_norm_cross: bool = False):
        super().__init__()
        if pe_mode != "ape":
            raise NotImplementedError("only pe_mode='ape' is implemented (all released models use it)")
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        self.model_channels, self.cond_channels, self.patch_size = model_channels, cond_channels, patch_size
        self.num_heads = num_heads or model_channels // num_head_channels
        self.share_mod, self.use_fp16, self.use_checkpoint = share_mod, use_fp16, use_checkpoint
        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels))
        g = resolution // patch_size
        grid = torch.stack(torch.meshgrid(*[torch.arange(g)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
        self.register_buffer("pos_emb", AbsolutePositionEmbedder(model_channels)(grid))
        self.input_layer = nn.Linear(in_channels * patch_size ** 3, model_channels)
        self.blocks = nn.ModuleList([
            ModulatedTransformerCrossBlock(model_channels, cond_channels, self.num_heads, mlp_ratio=mlp_ratio,
                                           attn_mode="full", share_mod=share_mod, qk_rms_norm=qk_rms_norm,
                                           qk_rms_norm_cross=qk_rms_norm_cross)
            for _ in range(num_blocks)])
        self.out_layer = nn.Linear(model_channels, out_channels * patch_size ** 3)
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        B, C, X, Y, Z = x.shape
        p = self.patch_size
        h = patchify(x, p)
        h = h.reshape(B, h.shape[1], -1).permute(0, 2, 1)
        h = self.input_layer(h) + self.pos_emb[None]
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        t_emb, h, cond = t_emb.type(self.dtype), h.type(self.dtype), cond.type(self.dtype)
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                h = torch.utils.checkpoint.checkpoint(block, h, t_emb, cond, use_reentrant=False)
            else:
                h = block(h, t_emb, cond)
        h = h.type(x.dtype)
        h = self.out_layer(F.layer_norm(h, h.shape[-1:]))
        g = X // p
        h = h.permute(0, 2, 1).reshape(B, h.shape[2], g, g, g)
        return unpatchify(h, p)


@register_model("ElasticSLatFlowModel")
class SLatFlowModel(TrellisModel):
    """Velocity of the structured latent: sparse res-blocks (x2 down) -> DiT blocks -> res-blocks (x2 up)."""

    _torso = ("input_blocks", "blocks", "out_blocks")

    def __init__(self, resolution: int, in_channels: int, model_channels: int, cond_channels: int,
                 out_channels: int, num_blocks: int, num_heads: Optional[int] = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, patch_size: int = 2, num_io_res_blocks: int = 2,
                 io_block_channels: Optional[List[int]] = None, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, use_skip_connection: bool = True, share_mod: bool = False,
                 qk_rms_norm: bool = False, qk_rms_norm_cross: bool = False):
        super().__init__()
        if pe_mode != "ape":
            raise NotImplementedError("only pe_mode='ape' is implemented (all released models use it)")
        io_block_channels = list(io_block_channels or [])
        if io_block_channels and 2 ** len(io_block_channels) != patch_size:
            raise ValueError("patch_size must equal 2 ** len(io_block_channels)")
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        self.model_channels, self.cond_channels, self.patch_size = model_channels, cond_channels, patch_size
        self.num_heads = num_heads or model_channels // num_head_channels
        self.use_skip_connection, self.share_mod = use_skip_connection, share_mod
        self.use_fp16, self.use_checkpoint = use_fp16, use_checkpoint
        self.t_embedder = TimestepEmbedder(model_channels)
        if share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(model_channels, 6 * model_channels))
        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        first = io_block_channels[0] if io_block_channels else model_channels
        self.input_layer = SparseLinear(in_channels, first)
        inb = []
        for ch, nxt in zip(io_block_channels, io_block_channels[1:] + [model_channels]):
            inb.extend(SparseResBlock3d(ch, model_channels, out_channels=ch) for _ in range(num_io_res_blocks - 1))
            inb.append(SparseResBlock3d(ch, model_channels, out_channels=nxt, downsample=True))
        self.input_blocks = nn.ModuleList(inb)
        self.blocks = nn.ModuleList([
            ModulatedSparseTransformerCrossBlock(model_channels, cond_channels, self.num_heads, mlp_ratio=mlp_ratio,
                                                 attn_mode="full", share_mod=share_mod, qk_rms_norm=qk_rms_norm,
                                                 qk_rms_norm_cross=qk_rms_norm_cross)
            for _ in range(num_blocks)])
        outb = []
        rev = list(reversed(io_block_channels))
        for ch, prev in zip(rev, [model_channels] + rev[:-1]):
            k = 2 if use_skip_connection else 1
            outb.append(SparseResBlock3d(prev * k, model_channels, out_channels=ch, upsample=True))
            outb.extend(SparseResBlock3d(ch * k, model_channels, out_channels=ch) for _ in range(num_io_res_blocks - 1))
        self.out_blocks = nn.ModuleList(outb)
        self.out_layer = SparseLinear(io_block_channels[0] if io_block_channels else model_channels, out_channels)
        if use_fp16:
            self.convert_to_fp16()

    def forward(self, x: SparseTensor, t: torch.Tensor, cond: torch.Tensor) -> SparseTensor:
        h = self.input_layer(x).type(self.dtype)
        t_emb = self.t_embedder(t)
        if self.share_mod:
            t_emb = self.adaLN_modulation(t_emb)
        t_emb, cond = t_emb.type(self.dtype), cond.type(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, t_emb)
            skips.append(h.feats)
        h = h.replace(h.feats + self.pos_embedder(h.coords[:, 1:]).type(self.dtype))
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                f = torch.utils.checkpoint.checkpoint(lambda ff, b=block, ref=h: b(ref.replace(ff), t_emb, cond).feats,
                                                      h.feats, use_reentrant=False)
                h = h.replace(f)
            else:
                h = block(h, t_emb, cond)
        for block, skip in zip(self.out_blocks, reversed(skips)):
            if self.use_skip_connection:
                h = block(h.replace(torch.cat([h.feats, skip], dim=1)), t_emb)
            else:
                h = block(h, t_emb)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]))
        return self.out_layer(h.type(x.dtype))
