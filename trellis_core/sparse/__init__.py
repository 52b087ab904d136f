"""Sparse voxel tensors and the sparse ops used by the TRELLIS models."""
from .tensor import SparseTensor, sparse_cat
from .ops import (SparseDownsample, SparseSubdivide, SparseUpsample, sparse_downsample,
                  sparse_subdivide, sparse_upsample)
from .conv import (SparseConv3d, get_sparse_conv_backend, set_sparse_conv_backend, spconv_available,
                   subm_conv3d_torch, submanifold_neighbours)

__all__ = [
    "SparseTensor", "sparse_cat", "SparseDownsample", "SparseUpsample", "SparseSubdivide",
    "sparse_downsample", "sparse_upsample", "sparse_subdivide", "SparseConv3d",
    "get_sparse_conv_backend", "set_sparse_conv_backend", "spconv_available",
    "subm_conv3d_torch", "submanifold_neighbours",
]
