"""Structured-latent VAE: swin sparse transformer encoder and the Gaussian / radiance-field /
mesh decoders (MODELS.md 3.3-3.7, 3.10)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..modules.blocks import SparseSubdivideBlock3d, SparseTransformerBlock
from ..modules.layers import AbsolutePositionEmbedder, SparseLinear, hammersley_offsets
from ..registry import TrellisModel, register_model
from ..sparse.tensor import SparseTensor
from .representations import Gaussian, Strivec

__all__ = ["SparseTransformerBase", "SLatEncoder", "SLatGaussianDecoder", "SLatRadianceFieldDecoder",
           "SLatMeshDecoder"]


class SparseTransformerBase(TrellisModel):
    """``input_layer`` (+APE) -> blocks of windowed/full sparse self-attention; returns torso-dtype features."""

    _torso = ("blocks",)

    def __init__(self, in_channels: int, model_channels: int, num_blocks: int, num_heads: Optional[int] = None,
                 num_head_channels: int = 64, mlp_ratio: float = 4.0, attn_mode: str = "full",
                 window_size: Optional[int] = None, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False):
        super().__init__()
        self.in_channels, self.model_channels, self.num_blocks = in_channels, model_channels, num_blocks
        self.num_heads = num_heads or model_channels // num_head_channels
        self.window_size, self.attn_mode, self.pe_mode = window_size, attn_mode, pe_mode
        self.use_fp16, self.use_checkpoint = use_fp16, use_checkpoint
        if pe_mode != "ape":
            raise NotImplementedError("only pe_mode='ape' is implemented (all released models use it)")
        self.pos_embedder = AbsolutePositionEmbedder(model_channels)
        self.input_layer = SparseLinear(in_channels, model_channels)
        blocks = []
        for i in range(num_blocks):
            if attn_mode in ("swin", "windowed"):
                shift = (window_size // 2) * (i % 2)
            elif attn_mode == "full":
                shift = 0
            else:
                raise NotImplementedError(f"attn_mode {attn_mode!r} (serialized modes are not used by released models)")
            blocks.append(SparseTransformerBlock(model_channels, self.num_heads, mlp_ratio=mlp_ratio,
                                                 attn_mode=attn_mode, window_size=window_size,
                                                 shift_window=shift, qk_rms_norm=qk_rms_norm))
        self.blocks = nn.ModuleList(blocks)

    def _finish_init(self):
        if self.use_fp16:
            self.convert_to_fp16()

    def forward_trunk(self, x: SparseTensor) -> SparseTensor:
        h = self.input_layer(x)
        h = h.replace(h.feats + self.pos_embedder(x.coords[:, 1:]).to(h.feats.dtype))
        h = h.type(self.dtype)
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                h = h.replace(torch.utils.checkpoint.checkpoint(
                    lambda f, b=block, ref=h: b(ref.replace(f)).feats, h.feats, use_reentrant=False))
            else:
                h = block(h)
        return h


@register_model("ElasticSLatEncoder")
class SLatEncoder(SparseTransformerBase):
    """Per-voxel features (e.g. 1024-d DINOv2) -> 8-channel structured latent."""

    def __init__(self, resolution: int, in_channels: int, model_channels: int, latent_channels: int,
                 num_blocks: int, num_heads: Optional[int] = None, num_head_channels: int = 64,
                 mlp_ratio: float = 4, attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape",
                 use_fp16: bool = False, use_checkpoint: bool = False, qk_rms_norm: bool = False):
        super().__init__(in_channels, model_channels, num_blocks, num_heads, num_head_channels, mlp_ratio,
                         attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm)
        self.resolution, self.latent_channels = resolution, latent_channels
        self.out_layer = SparseLinear(model_channels, 2 * latent_channels)
        self._finish_init()

    def forward(self, x: SparseTensor, sample_posterior: bool = True, return_raw: bool = False):
        h = self.forward_trunk(x).type(x.dtype)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]))
        h = self.out_layer(h)
        mean, logvar = h.feats.chunk(2, dim=-1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample_posterior else mean
        z = h.replace(z)
        return (z, mean, logvar) if return_raw else z


class _SLatDecoderBase(SparseTransformerBase):
    def __init__(self, resolution, model_channels, latent_channels, num_blocks, num_heads, num_head_channels,
                 mlp_ratio, attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm,
                 representation_config):
        super().__init__(latent_channels, model_channels, num_blocks, num_heads, num_head_channels, mlp_ratio,
                         attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm)
        self.resolution, self.latent_channels = resolution, latent_channels
        self.rep_config = representation_config or {}

    def decode_features(self, x: SparseTensor) -> SparseTensor:
        """Raw per-voxel ``out_layer`` features (fp32), before ``to_representation``."""
        h = self.forward_trunk(x).type(x.dtype)
        h = h.replace(F.layer_norm(h.feats, h.feats.shape[-1:]))
        return self.out_layer(h)

    def forward(self, x: SparseTensor):
        return self.to_representation(self.decode_features(x))


@register_model("ElasticSLatGaussianDecoder")
class SLatGaussianDecoder(_SLatDecoderBase):
    """Structured latent -> ``num_gaussians`` 3-D Gaussians per voxel."""

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 num_heads: Optional[int] = None, num_head_channels: int = 64, mlp_ratio: float = 4,
                 attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False,
                 representation_config: Optional[Dict[str, Any]] = None):
        super().__init__(resolution, model_channels, latent_channels, num_blocks, num_heads, num_head_channels,
                         mlp_ratio, attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm,
                         representation_config)
        g = self.rep_config["num_gaussians"]
        shapes = [("_xyz", (g, 3)), ("_features_dc", (g, 1, 3)), ("_scaling", (g, 3)),
                  ("_rotation", (g, 4)), ("_opacity", (g, 1))]
        self.layout, start = {}, 0
        for name, shape in shapes:
            size = math.prod(shape)
            self.layout[name] = {"shape": shape, "size": size, "range": (start, start + size)}
            start += size
        self.out_channels = start
        self.out_layer = SparseLinear(model_channels, self.out_channels)
        self.register_buffer("offset_perturbation", hammersley_offsets(g, self.rep_config["voxel_size"]))
        self._finish_init()

    def to_representation(self, x: SparseTensor) -> List[Gaussian]:
        cfg, res = self.rep_config, self.resolution
        out = []
        for s in x.layout:
            rep = Gaussian(sh_degree=0, aabb=[-0.5, -0.5, -0.5, 1.0, 1.0, 1.0],
                           mininum_kernel_size=cfg["3d_filter_kernel_size"], scaling_bias=cfg["scaling_bias"],
                           opacity_bias=cfg["opacity_bias"], scaling_activation=cfg["scaling_activation"],
                           device=x.feats.device)
            feats = x.feats[s]
            centre = (x.coords[s][:, 1:].float() + 0.5) / res
            for name, lay in self.layout.items():
                a, b = lay["range"]
                v = feats[:, a:b].reshape(-1, *lay["shape"]) * cfg["lr"][name]
                if name == "_xyz":
                    if cfg.get("perturb_offset", False):
                        v = v + self.offset_perturbation
                    v = torch.tanh(v) / res * 0.5 * cfg["voxel_size"]
                    v = centre.unsqueeze(1) + v
                setattr(rep, name, v.flatten(0, 1))
            out.append(rep)
        return out


@register_model("ElasticSLatRadianceFieldDecoder")
class SLatRadianceFieldDecoder(_SLatDecoderBase):
    """Structured latent -> Strivec radiance field (rank x 3 x dim tri-vectors per voxel)."""

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 num_heads: Optional[int] = None, num_head_channels: int = 64, mlp_ratio: float = 4,
                 attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False,
                 representation_config: Optional[Dict[str, Any]] = None):
        super().__init__(resolution, model_channels, latent_channels, num_blocks, num_heads, num_head_channels,
                         mlp_ratio, attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm,
                         representation_config)
        r, d = self.rep_config["rank"], self.rep_config["dim"]
        shapes = [("trivec", (r, 3, d)), ("density", (r,)), ("features_dc", (r, 1, 3))]
        self.layout, start = {}, 0
        for name, shape in shapes:
            size = math.prod(shape)
            self.layout[name] = {"shape": shape, "size": size, "range": (start, start + size)}
            start += size
        self.out_channels = start
        self.out_layer = SparseLinear(model_channels, self.out_channels)
        self._finish_init()

    def to_representation(self, x: SparseTensor) -> List[Strivec]:
        res = self.resolution
        out = []
        for s in x.layout:
            rep = Strivec(resolution=res, rank=self.rep_config["rank"], dim=self.rep_config["dim"])
            rep.position = (x.coords[s][:, 1:].float() + 0.5) / res
            rep.depth = torch.full((rep.position.shape[0], 1), int(math.log2(res)), dtype=torch.uint8,
                                   device=x.feats.device)
            feats = x.feats[s]
            for name, lay in self.layout.items():
                a, b = lay["range"]
                setattr(rep, name, feats[:, a:b].reshape(-1, *lay["shape"]))
            rep.trivec = rep.trivec + 1
            out.append(rep)
        return out


@register_model("ElasticSLatMeshDecoder")
class SLatMeshDecoder(_SLatDecoderBase):
    """Structured latent -> FlexiCubes features at 4x resolution (two subdivision blocks)."""

    _torso = ("blocks", "upsample")

    def __init__(self, resolution: int, model_channels: int, latent_channels: int, num_blocks: int,
                 num_heads: Optional[int] = None, num_head_channels: int = 64, mlp_ratio: float = 4,
                 attn_mode: str = "swin", window_size: int = 8, pe_mode: str = "ape", use_fp16: bool = False,
                 use_checkpoint: bool = False, qk_rms_norm: bool = False,
                 representation_config: Optional[Dict[str, Any]] = None):
        super().__init__(resolution, model_channels, latent_channels, num_blocks, num_heads, num_head_channels,
                         mlp_ratio, attn_mode, window_size, pe_mode, use_fp16, use_checkpoint, qk_rms_norm,
                         representation_config)
        self.use_color = bool(self.rep_config.get("use_color", False))
        self.out_channels = 8 + 24 + 21 + (48 if self.use_color else 0)
        self.upsample = nn.ModuleList([
            SparseSubdivideBlock3d(model_channels, resolution, out_channels=model_channels // 4),
            SparseSubdivideBlock3d(model_channels // 4, resolution * 2, out_channels=model_channels // 8),
        ])
        self.out_layer = SparseLinear(model_channels // 8, self.out_channels)
        self._finish_init()

    def decode_features(self, x: SparseTensor) -> SparseTensor:
        h = self.forward_trunk(x)
        for block in self.upsample:
            h = block(h)
        return self.out_layer(h.type(x.dtype))

    def to_representation(self, x: SparseTensor):
        from .mesh import extract_meshes
        return extract_meshes(x, resolution=self.resolution * 4, use_color=self.use_color)
