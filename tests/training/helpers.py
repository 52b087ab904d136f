"""Tiny model factories for the training tests (random init, NOT pretrained)."""
from __future__ import annotations

import torch

from trellis_core.models import SLatFlowModel, SLatMeshDecoder, SparseStructureDecoder, SparseStructureFlowModel
from trellis_core.train import initialize_weights

COND_CH = 16
COND_SIZE = 56


def tiny_cond(seed=0):
    from trellis_core.generate import DinoV2Conditioner
    return DinoV2Conditioner.tiny(seed=seed, hidden_size=COND_CH, image_size=COND_SIZE)


def tiny_ss_flow(seed=0, cond_channels=COND_CH):
    torch.manual_seed(seed)
    return initialize_weights(SparseStructureFlowModel(
        resolution=16, in_channels=8, out_channels=8, model_channels=32, cond_channels=cond_channels, num_blocks=1,
        num_heads=2, patch_size=2, qk_rms_norm=True))


def tiny_slat_flow(seed=0, cond_channels=COND_CH):
    torch.manual_seed(seed)
    return initialize_weights(SLatFlowModel(
        resolution=64, in_channels=8, out_channels=8, model_channels=32, cond_channels=cond_channels, num_blocks=1,
        num_heads=2, io_block_channels=[16], num_io_res_blocks=1, patch_size=2, qk_rms_norm=True))


def tiny_ss_decoder(seed=0):
    torch.manual_seed(seed)
    return SparseStructureDecoder(out_channels=1, latent_channels=8, num_res_blocks=1, channels=[16, 8, 8],
                                  num_res_blocks_middle=1)


def tiny_mesh_decoder(seed=0):
    torch.manual_seed(seed)
    # model_channels 256: the subdivision blocks' GroupNorm needs C/8 divisible by 32
    return SLatMeshDecoder(resolution=64, model_channels=256, latent_channels=8, num_blocks=1, num_heads=4,
                           attn_mode="swin", window_size=8, representation_config={"use_color": False})
