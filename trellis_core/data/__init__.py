"""Training data: catalog SQL -> frozen manifest -> datasets, voxel-balanced samplers, collation,
latent normalisation and packed shards."""
from .manifest import Manifest, build_manifest, manifest_id
from .sampler import BalancedBatchSampler, balanced_split, epoch_order
from .collate import collate_dense, collate_sparse, split_balanced
from .datasets import (LatentNormalization, OccupancyDataset, SLatDataset, SparseFeatDataset, SSLatentDataset,
                       TRELLIS_SLAT_NORMALIZATION)
from .image import crop_cond_image, preprocess_image
from .shards import ShardReader, write_shards

__all__ = ["Manifest", "build_manifest", "manifest_id", "BalancedBatchSampler", "balanced_split", "epoch_order",
           "collate_dense", "collate_sparse", "split_balanced", "LatentNormalization", "SSLatentDataset",
           "SLatDataset", "SparseFeatDataset", "OccupancyDataset", "TRELLIS_SLAT_NORMALIZATION",
           "crop_cond_image", "preprocess_image", "ShardReader", "write_shards"]
