"""Constructor kwargs of the released TRELLIS checkpoints (MODELS.md sections 3 and 10).

``RELEASED_CONFIGS[name] = {"name": <class>, "args": {...}}`` mirrors ``ckpts/<name>.json``; use it to
build a model without downloading (e.g. on the meta device) or to check a downloaded json."""
from __future__ import annotations

import copy
from typing import Any, Dict

__all__ = ["RELEASED_CONFIGS", "released_config"]

_GS_REP = {
    "lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
    "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 32, "2d_filter_kernel_size": 0.1,
    "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus",
}
_SLAT_TRUNK = {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12, "num_heads": 12,
               "mlp_ratio": 4, "attn_mode": "swin", "window_size": 8, "use_fp16": True}


def _ss_flow(c, cond, blocks, heads, cross=False):
    return {"name": "SparseStructureFlowModel", "args": {
        "resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": c, "cond_channels": cond,
        "num_blocks": blocks, "num_heads": heads, "mlp_ratio": 4, "patch_size": 1, "pe_mode": "ape",
        "qk_rms_norm": True, "qk_rms_norm_cross": cross, "use_fp16": True}}


def _slat_flow(c, cond, blocks, heads, io, k):
    return {"name": "SLatFlowModel", "args": {
        "resolution": 64, "in_channels": 8, "out_channels": 8, "model_channels": c, "cond_channels": cond,
        "num_blocks": blocks, "num_heads": heads, "mlp_ratio": 4, "patch_size": 2, "num_io_res_blocks": k,
        "io_block_channels": io, "pe_mode": "ape", "qk_rms_norm": True, "qk_rms_norm_cross": False,
        "use_fp16": True}}


RELEASED_CONFIGS: Dict[str, Dict[str, Any]] = {
    "ss_enc_conv3d_16l8_fp16": {"name": "SparseStructureEncoder", "args": {
        "in_channels": 1, "latent_channels": 8, "num_res_blocks": 2, "num_res_blocks_middle": 2,
        "channels": [32, 128, 512], "use_fp16": True}},
    "ss_dec_conv3d_16l8_fp16": {"name": "SparseStructureDecoder", "args": {
        "out_channels": 1, "latent_channels": 8, "num_res_blocks": 2, "num_res_blocks_middle": 2,
        "channels": [512, 128, 32], "use_fp16": True}},
    "slat_enc_swin8_B_64l8_fp16": {"name": "SLatEncoder", "args": {
        **{k: v for k, v in _SLAT_TRUNK.items()}, "in_channels": 1024}},
    "slat_dec_gs_swin8_B_64l8gs32_fp16": {"name": "SLatGaussianDecoder", "args": {
        **_SLAT_TRUNK, "representation_config": _GS_REP}},
    "slat_dec_rf_swin8_B_64l8r16_fp16": {"name": "SLatRadianceFieldDecoder", "args": {
        **_SLAT_TRUNK, "representation_config": {"rank": 16, "dim": 8}}},
    "slat_dec_mesh_swin8_B_64l8m256c_fp16": {"name": "SLatMeshDecoder", "args": {
        **_SLAT_TRUNK, "representation_config": {"use_color": True}}},
    "ss_flow_img_dit_L_16l8_fp16": _ss_flow(1024, 1024, 24, 16),
    "ss_flow_txt_dit_B_16l8_fp16": _ss_flow(768, 768, 12, 12),
    "ss_flow_txt_dit_L_16l8_fp16": _ss_flow(1024, 768, 24, 16),
    "ss_flow_txt_dit_XL_16l8_fp16": _ss_flow(1280, 768, 28, 16, cross=True),
    "slat_flow_img_dit_L_64l8p2_fp16": _slat_flow(1024, 1024, 24, 16, [128], 2),
    "slat_flow_txt_dit_B_64l8p2_fp16": _slat_flow(768, 768, 12, 12, [128], 2),
    "slat_flow_txt_dit_L_64l8p2_fp16": _slat_flow(1024, 768, 24, 16, [128], 2),
    "slat_flow_txt_dit_XL_64l8p2_fp16": _slat_flow(1280, 768, 28, 16, [256], 3),
}


def released_config(name: str) -> Dict[str, Any]:
    """A deep copy of ``{"name": class, "args": kwargs}`` of a released checkpoint."""
    try:
        return copy.deepcopy(RELEASED_CONFIGS[name])
    except KeyError:
        raise KeyError(f"unknown released model {name!r}; known: {sorted(RELEASED_CONFIGS)}") from None
