"""VAE trainers smoke: SS VAE (occupancy BCE + KL) and SLat VAE (encoder + mesh decoder, SDF L1 + KL)
take steps with finite losses and write released-layout checkpoints."""
from __future__ import annotations

import numpy as np
import torch

from trellis_core import from_pretrained
from trellis_core.data import OccupancyDataset, SparseFeatDataset, build_manifest
from trellis_core.data.synthetic import FEAT_MODEL, write_demo_dataset
from trellis_core.models import SLatEncoder, SparseStructureDecoder, SparseStructureEncoder
from trellis_core.train import TrainConfig
from trellis_core.train.vae import SLatVAETrainer, SSVAETrainer, voxel_sdf

from tests.training.helpers import tiny_mesh_decoder


def test_vae_trainers(tmp_path):
    from catalogs.catalog import Catalog
    from catalogs.store import Store
    store, cat = Store(str(tmp_path / "s")), Catalog(str(tmp_path / "c.duckdb"))
    write_demo_dataset(store, cat, n_assets=4, size_range=(0.04, 0.06), n_views=1, image_size=32,
                       with_features=True, feat_dim=32)
    m = build_manifest(cat, "SELECT sha256 FROM metadata", store.url, {"features": FEAT_MODEL})
    cfg = dict(batch_size=2, max_steps=2, lr=1e-3, ema_rates=(0.9,), log_every=0)
    torch.manual_seed(0)
    enc = SparseStructureEncoder(in_channels=1, latent_channels=8, num_res_blocks=1, channels=[8, 8, 16],
                                 num_res_blocks_middle=1)
    dec = SparseStructureDecoder(out_channels=1, latent_channels=8, num_res_blocks=1, channels=[16, 8, 8],
                                 num_res_blocks_middle=1)
    ss = SSVAETrainer(enc, dec, OccupancyDataset(m, resolution=32), TrainConfig(out_dir=str(tmp_path / "ss"), **cfg))
    h = ss.train()
    assert all(np.isfinite(x["loss"]) for x in h)
    assert from_pretrained(ss.ckpt_stem("decoder")).__class__.__name__ == "SparseStructureDecoder"
    senc = SLatEncoder(resolution=64, in_channels=32, model_channels=256, latent_channels=8, num_blocks=1,
                       num_heads=4, attn_mode="swin", window_size=8)
    sl = SLatVAETrainer(senc, tiny_mesh_decoder(), SparseFeatDataset(m), TrainConfig(out_dir=str(tmp_path / "sl"), **cfg))
    h = sl.train()
    assert all(np.isfinite(x["loss"]) for x in h) and h[0]["sdf_l1_vox"] > 0
    assert from_pretrained(sl.ckpt_stem("encoder", ema=0.9)).__class__.__name__ == "SLatEncoder"
    sdf = voxel_sdf(np.array([[10, 10, 10], [10, 10, 11]], np.uint8), 32)
    assert sdf[10, 10, 10] <= 0 < sdf[0, 0, 0]
