"""The TRELLIS model family (every class of shared/spec/MODELS.md)."""
from .ss_vae import SparseStructureDecoder, SparseStructureEncoder
from .slat_vae import (SLatEncoder, SLatGaussianDecoder, SLatMeshDecoder, SLatRadianceFieldDecoder,
                       SparseTransformerBase)
from .flow import SLatFlowModel, SparseStructureFlowModel
from .representations import Gaussian, MeshExtractResult, Strivec
from .released import RELEASED_CONFIGS, released_config
from .tiny import TINY_CONFIGS, tiny_model

# Elastic* names: same state dict and eval forward (MODELS.md 3.10); registered as aliases.
ElasticSLatEncoder = SLatEncoder
ElasticSLatGaussianDecoder = SLatGaussianDecoder
ElasticSLatRadianceFieldDecoder = SLatRadianceFieldDecoder
ElasticSLatMeshDecoder = SLatMeshDecoder
ElasticSLatFlowModel = SLatFlowModel

__all__ = [
    "SparseStructureEncoder", "SparseStructureDecoder", "SparseTransformerBase", "SLatEncoder",
    "SLatGaussianDecoder", "SLatRadianceFieldDecoder", "SLatMeshDecoder", "SparseStructureFlowModel",
    "SLatFlowModel", "ElasticSLatEncoder", "ElasticSLatGaussianDecoder", "ElasticSLatRadianceFieldDecoder",
    "ElasticSLatMeshDecoder", "ElasticSLatFlowModel", "Gaussian", "Strivec", "MeshExtractResult",
    "RELEASED_CONFIGS", "released_config", "TINY_CONFIGS", "tiny_model",
]
