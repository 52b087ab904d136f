"""Lightweight 3-D representation containers returned by the SLat decoders.

Only the fields and activations needed to consume the decoders' outputs are implemented;
rendering (the Gaussian rasteriser, the Strivec octree renderer) is out of scope.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["Gaussian", "Strivec", "MeshExtractResult", "SH_C0"]

SH_C0 = 0.28209479177387814


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def _inverse_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


class Gaussian:
    """3-D Gaussians with SH degree 0 (MODELS.md 3.5). Raw fields: ``_xyz`` in [0, 1]^3 grid units,
    ``_features_dc (N, 1, 3)``, ``_scaling``, ``_rotation``, ``_opacity``; ``get_*`` activate them."""

    def __init__(self, aabb: Sequence[float] = (-0.5, -0.5, -0.5, 1.0, 1.0, 1.0), sh_degree: int = 0,
                 mininum_kernel_size: float = 0.0, scaling_bias: float = 0.01, opacity_bias: float = 0.1,
                 scaling_activation: str = "exp", device="cpu"):
        self.sh_degree = sh_degree
        self.mininum_kernel_size = mininum_kernel_size
        self.aabb = torch.tensor(list(aabb), dtype=torch.float32, device=device)
        if scaling_activation == "exp":
            self.scaling_activation, inv = torch.exp, torch.log
        elif scaling_activation == "softplus":
            self.scaling_activation, inv = F.softplus, _inverse_softplus
        else:
            raise ValueError(f"unknown scaling_activation {scaling_activation!r}")
        self.scale_bias = inv(torch.tensor(scaling_bias, dtype=torch.float32)).to(device)
        self.rots_bias = torch.tensor([1.0, 0.0, 0.0, 0.0], device=device)
        self.opacity_bias = _inverse_sigmoid(torch.tensor(opacity_bias, dtype=torch.float32)).to(device)
        self._xyz = self._features_dc = self._features_rest = None
        self._scaling = self._rotation = self._opacity = None

    @property
    def get_xyz(self):
        return self._xyz * self.aabb[None, 3:] + self.aabb[None, :3]

    @property
    def get_features(self):
        if self._features_rest is not None:
            return torch.cat([self._features_dc, self._features_rest], dim=2)
        return self._features_dc

    @property
    def get_scaling(self):
        s = self.scaling_activation(self._scaling + self.scale_bias)
        return torch.sqrt(torch.square(s) + self.mininum_kernel_size ** 2)

    @property
    def get_rotation(self):
        return F.normalize(self._rotation + self.rots_bias[None, :])

    @property
    def get_opacity(self):
        return torch.sigmoid(self._opacity + self.opacity_bias)

    @property
    def get_colors(self):
        """RGB from the degree-0 SH coefficients, as the renderer computes it."""
        return SH_C0 * self._features_dc[:, 0] + 0.5

    def __len__(self):
        return 0 if self._xyz is None else self._xyz.shape[0]


@dataclass
class Strivec:
    """Sparse-voxel radiance field with rank-``rank`` tri-vector features (MODELS.md 3.6)."""

    resolution: int
    rank: int
    dim: int
    aabb: Sequence[float] = (-0.5, -0.5, -0.5, 1.0, 1.0, 1.0)
    sh_degree: int = 0
    density_shift: float = 0.0
    position: Optional[torch.Tensor] = None
    depth: Optional[torch.Tensor] = None
    trivec: Optional[torch.Tensor] = None
    density: Optional[torch.Tensor] = None
    features_dc: Optional[torch.Tensor] = None


@dataclass
class MeshExtractResult:
    vertices: torch.Tensor
    faces: torch.Tensor
    vertex_attrs: Optional[torch.Tensor] = None
    success: bool = True
