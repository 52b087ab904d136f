"""VAE trainers.

* :class:`SSVAETrainer` -- SparseStructureEncoder + SparseStructureDecoder on dense occupancy
  (``ss`` (B, 1, R, R, R)): BCE on the decoder logits + ``lambda_kl`` x KL of the posterior.
* :class:`SLatVAETrainer` -- SLatEncoder + **SLatMeshDecoder** only (the Gaussian and radiance-field
  decoders need a differentiable rasterizer, which is not here). Supervision: the decoder's 8 corner
  SDF values of every 4x-resolution cube are regressed (L1, clamped to a narrow band) onto a target
  SDF computed from the asset's own 64³ voxels (distance transform of the shell occupancy, in world
  units, interpolated at the cube corners), + KL. This teaches geometry only; the FlexiCubes
  deformation/weights and colour channels get no direct signal (the reference supervises them by
  rendering). Batch: ``coords`` (N, 3) + ``feats`` (N, 1024) from the features npz.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.collate import collate_dense, collate_sparse
from ..sparse.tensor import SparseTensor
from . import dist as D
from .trainer import Trainer

__all__ = ["SSVAETrainer", "SLatVAETrainer", "voxel_sdf"]


def _kl(mean, logvar):
    return 0.5 * (mean ** 2 + logvar.exp() - logvar - 1)


class SSVAETrainer(Trainer):
    trainable = ("encoder", "decoder")

    def __init__(self, encoder, decoder, dataset, config, lambda_kl: float = 1e-3, device=None):
        super().__init__({"encoder": encoder, "decoder": decoder}, dataset, config, device)
        self.lambda_kl = lambda_kl

    def split(self, raw):
        return [collate_dense(raw)]

    def training_losses(self, batch, step):
        x = batch["ss"].float().to(self.device)
        z, mean, logvar = self.wrapped["encoder"](x, sample_posterior=True, return_raw=True)
        logits = self.wrapped["decoder"](z)
        bce = F.binary_cross_entropy_with_logits(logits.float(), x)
        kl = _kl(mean.float(), logvar.float()).mean()
        loss = bce + self.lambda_kl * kl
        return loss, {"loss": float(loss) / self.world, "bce": float(bce) / self.world, "kl": float(kl) / self.world}


def voxel_sdf(coords: np.ndarray, res: int = 64) -> np.ndarray:
    """Signed distance (world units) on the voxel-centre grid of a shell occupancy: distance to the
    nearest occupied voxel minus half a voxel outside the shell's filled interior, negative inside."""
    from scipy import ndimage
    occ = np.zeros((res,) * 3, bool)
    occ[coords[:, 0], coords[:, 1], coords[:, 2]] = True
    filled = ndimage.binary_fill_holes(occ)
    outside = ndimage.distance_transform_edt(~filled)
    inside = ndimage.distance_transform_edt(filled)
    return ((outside - inside) / res).astype(np.float32)


def _trilinear(grid: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Sample a (R, R, R) grid at continuous voxel-centre coordinates p (M, 3) (clamped)."""
    R = grid.shape[0]
    p = p.clamp(0, R - 1)
    i0 = p.floor().long().clamp(max=R - 2)
    f = p - i0
    out = 0
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) * (f[:, 2] if dz else 1 - f[:, 2])
                out = out + w * grid[i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz]
    return out


class SLatVAETrainer(Trainer):
    trainable = ("encoder", "decoder")
    _corners = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]])

    def __init__(self, encoder, decoder, dataset, config, lambda_kl: float = 1e-6, band: float = 2 / 64,
                 device=None):
        super().__init__({"encoder": encoder, "decoder": decoder}, dataset, config, device)
        self.lambda_kl, self.band = lambda_kl, band

    def split(self, raw):
        total = float(D.all_reduce_sum(torch.tensor([len(raw)], dtype=torch.float64))[0])
        batch = collate_sparse(raw, key="feats")
        batch["sdf"] = [torch.from_numpy(voxel_sdf(s["coords"].numpy(), self.models["encoder"].resolution))
                        for s in raw]
        return [(batch, total)]

    def training_losses(self, pack, step):
        batch, total = pack
        x: SparseTensor = batch["feats"].to(self.device)
        z, mean, logvar = self.wrapped["encoder"](x, sample_posterior=True, return_raw=True)
        dec = self.models["decoder"]
        out = self.wrapped["decoder"].module.decode_features(z) if self.world > 1 else dec.decode_features(z)
        res = dec.resolution * 4
        scale = res // dec.resolution
        loss = 0.0
        for b, s in enumerate(out.layout):
            c = out.coords[s][:, 1:].long()
            corners = (c[:, None, :] + self._corners.to(c.device)[None]).reshape(-1, 3).float()
            p = corners / scale - 0.5                           # corner -> 64³ voxel-centre coordinates
            target = _trilinear(batch["sdf"][b].to(self.device), p).reshape(-1, 8).clamp(-self.band, self.band)
            pred = out.feats[s][:, :8].float()
            loss = loss + (pred - target).abs().mean() * 64  # in voxel units
        recon = loss / total
        kl = _kl(mean.float(), logvar.float()).mean()
        share = recon + self.lambda_kl * kl / self.world
        return share * self.world, {"loss": float(share), "sdf_l1_vox": float(recon)}
