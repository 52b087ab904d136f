"""Transformer and residual blocks of the TRELLIS family (MODELS.md 2.7, 2.8, 3.1, 3.2, 3.7, 3.9)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse.conv import SparseConv3d
from ..sparse.ops import sparse_downsample, sparse_subdivide, sparse_upsample
from ..sparse.tensor import SparseTensor
from .attention import MultiHeadAttention, SparseMultiHeadAttention
from .layers import FeedForwardNet, SparseFeedForwardNet, SparseLinear, SparseSiLU
from .norm import ChannelLayerNorm32, LayerNorm32, SparseGroupNorm32

__all__ = ["SparseTransformerBlock", "ModulatedTransformerCrossBlock", "ModulatedSparseTransformerCrossBlock",
           "ResBlock3d", "DownsampleBlock3d", "UpsampleBlock3d", "pixel_shuffle_3d", "SparseResBlock3d",
           "SparseSubdivideBlock3d"]


# ----------------------------------------------------------------------------- transformer blocks
class SparseTransformerBlock(nn.Module):
    """``x + Attn(norm1(x))``, ``x + FFN(norm2(x))`` (norms without affine, eps 1e-6)."""

    def __init__(self, channels, num_heads, mlp_ratio=4.0, attn_mode="swin", window_size=None,
                 shift_window=0, qk_rms_norm=False, qkv_bias=True):
        super().__init__()
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.attn = SparseMultiHeadAttention(channels, num_heads, attn_mode=attn_mode, window_size=window_size,
                                             shift_window=shift_window, qkv_bias=qkv_bias, use_rms_norm=qk_rms_norm)
        self.mlp = SparseFeedForwardNet(channels, mlp_ratio)

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.attn(x.replace(self.norm1(x.feats)))
        x = x.replace(x.feats + h.feats)
        return x.replace(x.feats + self.mlp.mlp(self.norm2(x.feats)))


def _modulation(mod: torch.Tensor, layer: nn.Module):
    return layer(mod).chunk(6, dim=1)


class ModulatedTransformerCrossBlock(nn.Module):
    """adaLN-modulated self-attn + plain cross-attn + modulated FFN on dense tokens ``(B, L, C)``."""

    def __init__(self, channels, ctx_channels, num_heads, mlp_ratio=4.0, attn_mode="full", share_mod=False,
                 qk_rms_norm=False, qk_rms_norm_cross=False, qkv_bias=True):
        super().__init__()
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = self._attn(channels, num_heads, type="self", attn_mode=attn_mode,
                                    qkv_bias=qkv_bias, use_rms_norm=qk_rms_norm)
        self.cross_attn = self._attn(channels, num_heads, ctx_channels=ctx_channels, type="cross",
                                     attn_mode="full", qkv_bias=qkv_bias, use_rms_norm=qk_rms_norm_cross)
        self.mlp = self._ffn(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    _attn = MultiHeadAttention
    _ffn = FeedForwardNet

    def _mods(self, mod):
        if self.share_mod:
            return mod.chunk(6, dim=1)
        return self.adaLN_modulation(mod).chunk(6, dim=1)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self._mods(mod)
        h = self.norm1(x) * (1 + scale_msa.unsqueeze(1)) + shift_msa.unsqueeze(1)
        x = x + self.self_attn(h) * gate_msa.unsqueeze(1)
        x = x + self.cross_attn(self.norm2(x), context)
        h = self.norm3(x) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1)
        return x + self.mlp(h) * gate_mlp.unsqueeze(1)


class ModulatedSparseTransformerCrossBlock(ModulatedTransformerCrossBlock):
    """Sparse version: modulation vectors ``(B, C)`` are broadcast over each instance's voxels."""

    def __init__(self, channels, ctx_channels, num_heads, mlp_ratio=4.0, attn_mode="full", window_size=None,
                 shift_window=0, share_mod=False, qk_rms_norm=False, qk_rms_norm_cross=False, qkv_bias=True):
        nn.Module.__init__(self)
        self.share_mod = share_mod
        self.norm1 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.norm2 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm3 = LayerNorm32(channels, elementwise_affine=False, eps=1e-6)
        self.self_attn = SparseMultiHeadAttention(channels, num_heads, type="self", attn_mode=attn_mode,
                                                  window_size=window_size, shift_window=shift_window,
                                                  qkv_bias=qkv_bias, use_rms_norm=qk_rms_norm)
        self.cross_attn = SparseMultiHeadAttention(channels, num_heads, ctx_channels=ctx_channels, type="cross",
                                                   attn_mode="full", qkv_bias=qkv_bias,
                                                   use_rms_norm=qk_rms_norm_cross)
        self.mlp = SparseFeedForwardNet(channels, mlp_ratio)
        if not share_mod:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 6 * channels, bias=True))

    def forward(self, x: SparseTensor, mod: torch.Tensor, context: torch.Tensor) -> SparseTensor:
        mods = [m[x.batch_index] for m in self._mods(mod)]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        f = x.feats
        h = self.norm1(f) * (1 + scale_msa) + shift_msa
        f = f + self.self_attn(x.replace(h)).feats * gate_msa
        f = f + self.cross_attn(x.replace(self.norm2(f)), context).feats
        h = self.norm3(f) * (1 + scale_mlp) + shift_mlp
        f = f + self.mlp.mlp(h) * gate_mlp
        return x.replace(f)


# ----------------------------------------------------------------------------- dense conv blocks
class ResBlock3d(nn.Module):
    def __init__(self, channels: int, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1 = ChannelLayerNorm32(channels)
        self.norm2 = ChannelLayerNorm32(out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        self.skip_connection = nn.Conv3d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip_connection(x)


class DownsampleBlock3d(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 2, stride=2)

    def forward(self, x):
        return self.conv(x)


def pixel_shuffle_3d(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Channel ``c*s^3 + (i*s + j)*s + k`` at ``(X, Y, Z)`` -> channel ``c`` at ``(sX+i, sY+j, sZ+k)``."""
    B, C, X, Y, Z = x.shape
    c = C // scale ** 3
    x = x.reshape(B, c, scale, scale, scale, X, Y, Z)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(B, c, X * scale, Y * scale, Z * scale)


class UpsampleBlock3d(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels * 8, 3, padding=1)

    def forward(self, x):
        return pixel_shuffle_3d(self.conv(x), 2)


# ----------------------------------------------------------------------------- sparse conv blocks
class SparseResBlock3d(nn.Module):
    """Timestep-modulated sparse res-block of the SLat flow (optionally re-sampling first)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None,
                 downsample: bool = False, upsample: bool = False):
        super().__init__()
        if downsample and upsample:
            raise ValueError("a block re-samples in one direction only")
        self.channels, self.out_channels = channels, out_channels or channels
        self.downsample, self.upsample = downsample, upsample
        self.norm1 = LayerNorm32(channels, elementwise_affine=True, eps=1e-6)
        self.norm2 = LayerNorm32(self.out_channels, elementwise_affine=False, eps=1e-6)
        self.conv1 = SparseConv3d(channels, self.out_channels, 3)
        self.conv2 = SparseConv3d(self.out_channels, self.out_channels, 3)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels, bias=True))
        self.skip_connection = (SparseLinear(channels, self.out_channels) if channels != self.out_channels
                                else nn.Identity())

    def forward(self, x: SparseTensor, emb: torch.Tensor) -> SparseTensor:
        emb_out = self.emb_layers(emb).type(x.dtype)
        scale, shift = emb_out.chunk(2, dim=1)
        if self.downsample:
            x = sparse_downsample(x, 2)
        elif self.upsample:
            x = sparse_upsample(x, 2)
        h = x.replace(F.silu(self.norm1(x.feats)))
        h = self.conv1(h)
        f = self.norm2(h.feats) * (1 + scale[x.batch_index]) + shift[x.batch_index]
        h = self.conv2(h.replace(F.silu(f)))
        skip = self.skip_connection(x) if isinstance(self.skip_connection, SparseLinear) else x
        return h.replace(h.feats + skip.feats)


class SparseSubdivideBlock3d(nn.Module):
    """GroupNorm+SiLU -> subdivide (x2) -> conv3 -> GroupNorm -> SiLU -> conv3, plus a 1x1 skip."""

    def __init__(self, channels: int, resolution: int, out_channels: Optional[int] = None, num_groups: int = 32):
        super().__init__()
        self.channels, self.resolution = channels, resolution
        self.out_resolution = resolution * 2
        self.out_channels = out_channels or channels
        key = f"res_{self.out_resolution}"
        self.act_layers = nn.Sequential(SparseGroupNorm32(num_groups, channels), SparseSiLU())
        self.out_layers = nn.Sequential(
            SparseConv3d(channels, self.out_channels, 3, indice_key=key),
            SparseGroupNorm32(num_groups, self.out_channels),
            SparseSiLU(),
            SparseConv3d(self.out_channels, self.out_channels, 3, indice_key=key),
        )
        self.skip_connection = (SparseConv3d(channels, self.out_channels, 1, indice_key=key)
                                if self.out_channels != channels else nn.Identity())

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = self.act_layers(x)
        h = sparse_subdivide(h)
        x = sparse_subdivide(x)
        # h and x have identical coords: share one cache so neighbour maps are built once
        h = SparseTensor(h.feats, x.coords, cache=x.cache, layout=x._layout)
        h = self.out_layers(h)
        return h.replace(h.feats + self.skip_connection(x).feats)
