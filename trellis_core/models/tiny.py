"""The one registry of tiny seeded models: for tests, the offline demo and dry runs on CPU.

Every tiny model is random, built from a fixed seed, and NOT pretrained. Two layers:

- architectures: ``TINY_CONFIGS`` (every TRELLIS class, ``tiny_model(name, seed)``), ``TINY_DINOV2``
  (``tiny_dinov2``: DINOv2-with-registers, 37x37 patch grid at 518 px like ViT-L/14-reg) and
  ``TINY_CLIP`` (``tiny_clip``, ``tiny_clip_text``). Shapes chain like the released models: SS decoder
  latent 4³ -> 16³ occupancy, SS flow on 4³ x 8, SLat models with 8 latent channels, condition width 16.
  Callers that need another size pass overrides; there is no second tiny DINOv2 or CLIP anywhere.
- kinds: the named models a stage's model location can be, ``tiny:<kind>[:<seed>]`` (see
  ``trellis_core.locations``): ``TINY_KINDS`` maps a kind to how it is written to disk in its
  family's layout (a transformers folder, a TRELLIS ``P.json`` + ``P.safetensors`` stem, or one
  weights file). A layer that owns another architecture adds its kind with ``register_tiny``
  (the aesthetic MLP head does), so the grammar, the cache and the "not pretrained" side file stay
  in one place.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict

import torch

from ..registry import get_model_class

__all__ = ["TINY_CONFIGS", "TINY_DINOV2", "TINY_CLIP", "TINY_KINDS", "TinyKind", "tiny_model", "tiny_dinov2",
           "tiny_clip", "tiny_clip_text", "register_tiny", "save_tiny", "side_file", "SIDE_FILE"]

_GS = {"lr": {"_xyz": 1.0, "_features_dc": 1.0, "_opacity": 1.0, "_scaling": 1.0, "_rotation": 0.1},
       "perturb_offset": True, "voxel_size": 1.5, "num_gaussians": 4, "2d_filter_kernel_size": 0.1,
       "3d_filter_kernel_size": 9e-4, "scaling_bias": 4e-3, "opacity_bias": 0.1, "scaling_activation": "softplus"}

TINY_CONFIGS: Dict[str, Dict[str, Any]] = {
    "SparseStructureEncoder": dict(in_channels=1, latent_channels=8, num_res_blocks=1, channels=[8, 8, 8],
                                   num_res_blocks_middle=1),
    "SparseStructureDecoder": dict(out_channels=1, latent_channels=8, num_res_blocks=1, channels=[8, 8, 8],
                                   num_res_blocks_middle=1),
    "SparseStructureFlowModel": dict(resolution=4, in_channels=8, out_channels=8, model_channels=32,
                                     cond_channels=16, num_blocks=1, num_heads=2, patch_size=1, qk_rms_norm=True),
    "SLatFlowModel": dict(resolution=16, in_channels=8, out_channels=8, model_channels=32, cond_channels=16,
                          num_blocks=1, num_heads=2, patch_size=2, io_block_channels=[16], qk_rms_norm=True),
    "SLatEncoder": dict(resolution=16, in_channels=12, model_channels=32, latent_channels=8, num_blocks=2,
                        num_heads=2),
    "SLatGaussianDecoder": dict(resolution=16, model_channels=32, latent_channels=8, num_blocks=1, num_heads=2,
                                representation_config=_GS),
    "SLatRadianceFieldDecoder": dict(resolution=16, model_channels=32, latent_channels=8, num_blocks=1,
                                     num_heads=2, representation_config={"rank": 4, "dim": 2}),
    "SLatMeshDecoder": dict(resolution=16, model_channels=256, latent_channels=8, num_blocks=1, num_heads=4,
                            representation_config={"use_color": True}),
}

TINY_DINOV2: Dict[str, Any] = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                   mlp_ratio=2, patch_size=14, image_size=518, num_register_tokens=4,
                                   layerscale_value=1.0)
"""DINOv2-with-registers: a 37x37 patch grid at 518 px like ViT-L/14-reg, 64 channels."""

TINY_CLIP: Dict[str, Any] = dict(
    text_config={"vocab_size": 49408, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "intermediate_size": 64, "max_position_embeddings": 77},
    vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                   "image_size": 64, "patch_size": 16},
    projection_dim=32)
"""CLIP (text + vision towers, 32-d projection); vocab 49408 keeps CLIP's bos/eos ids in range."""

SIDE_FILE = "trellis_data_model.json"
"""Provenance side file of a folder model; a TRELLIS stem ``P`` or a weights file ``F`` has ``<P|F>.trellis_data.json``."""


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def tiny_model(name: str, seed: int = 0, **overrides):
    """A seeded tiny instance of TRELLIS model class ``name`` in eval mode (random weights, not pretrained)."""
    kwargs = copy.deepcopy(TINY_CONFIGS[name])
    kwargs.update(overrides)
    return _seeded(seed, lambda: get_model_class(name)(**kwargs))


def tiny_dinov2(seed: int = 0, **overrides):
    """A seeded tiny ``Dinov2WithRegistersModel`` (``overrides`` are config entries)."""
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(**{**TINY_DINOV2, **overrides})
    return _seeded(seed, lambda: Dinov2WithRegistersModel(cfg))


def _clip_config(overrides: Dict[str, Any]) -> Dict[str, Any]:
    cfg = copy.deepcopy(TINY_CLIP)
    for key, value in overrides.items():
        if key in ("text_config", "vision_config"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def tiny_clip(seed: int = 0, **overrides):
    """A seeded tiny ``CLIPModel``; ``text_config`` / ``vision_config`` overrides update the towers."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(**_clip_config(overrides))
    return _seeded(seed, lambda: CLIPModel(cfg))


def tiny_clip_text(seed: int = 0, **text_overrides):
    """The text tower of the tiny CLIP alone (``CLIPTextModel``), e.g. with a small vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(**{**TINY_CLIP["text_config"], **text_overrides})
    return _seeded(seed, lambda: CLIPTextModel(cfg))


# -- kinds: tiny models on disk ---------------------------------------------------------------------
@dataclass(frozen=True)
class TinyKind:
    """A named tiny model: its family's on-disk form and the function that writes it.

    ``write(dest, seed, **overrides)`` writes the model at ``dest`` (a folder, a stem or a file,
    by family) and returns that path; ``config`` is what defines it (it keys the cache)."""

    family: str
    name: str
    write: Callable[..., Path]
    config: Dict[str, Any]


def _dinov2(dest: Path, seed: int, **overrides) -> Path:
    tiny_dinov2(seed, **overrides).save_pretrained(str(dest))
    return dest


def _clip(dest: Path, seed: int, **overrides) -> Path:
    tiny_clip(seed, **overrides).save_pretrained(str(dest))
    return dest


def _trellis(cls: str, base: Dict[str, Any]) -> Callable[..., Path]:
    def write(dest: Path, seed: int, **overrides) -> Path:
        from ..checkpoint import save_pretrained

        save_pretrained(tiny_model(cls, seed, **{**base, **overrides}), str(dest))
        return dest
    return write


_SLAT_ENC = dict(resolution=64, in_channels=TINY_DINOV2["hidden_size"], attn_mode="swin", window_size=8)
"""The SLat encoder kind reads the tiny DINOv2's features on the 64³ grid (swin windows of 8)."""

TINY_KINDS: Dict[str, TinyKind] = {
    "dinov2": TinyKind("transformers", "dinov2_tiny", _dinov2, TINY_DINOV2),
    "clip": TinyKind("transformers", "clip_tiny", _clip, TINY_CLIP),
    "ss_enc": TinyKind("trellis", "ss_enc_tiny", _trellis("SparseStructureEncoder", {}),
                       TINY_CONFIGS["SparseStructureEncoder"]),
    "slat_enc": TinyKind("trellis", "slat_enc_tiny", _trellis("SLatEncoder", _SLAT_ENC),
                         {**TINY_CONFIGS["SLatEncoder"], **_SLAT_ENC}),
}


def register_tiny(kind: str, tiny: TinyKind) -> None:
    """Add a kind owned by another layer (same kind registered twice must be the same definition)."""
    old = TINY_KINDS.get(kind)
    if old is not None and (old.family, old.name, old.config) != (tiny.family, tiny.name, tiny.config):
        raise ValueError(f"tiny kind {kind!r} is already registered with another definition")
    TINY_KINDS[kind] = tiny


def side_file(path: Path, family: str) -> Path:
    """Where the provenance side file of a model at ``path`` lives."""
    return path / SIDE_FILE if family == "transformers" else Path(str(path) + ".trellis_data.json")


def save_tiny(kind: str, dest: str | os.PathLike, seed: int = 0, name: str | None = None, **overrides) -> Path:
    """Write tiny model ``kind`` at ``dest`` with its "not pretrained" side file; returns ``dest``."""
    try:
        tiny = TINY_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown tiny model kind {kind!r}; known: {sorted(TINY_KINDS)}") from None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = tiny.write(dest, seed, **overrides)
    name = name or tiny.name
    side_file(path, tiny.family).write_text(json.dumps({
        "name": name, "pretrained": False, "seed": seed, "kind": kind, "overrides": overrides,
        "note": f"tiny {kind} model, random init with seed {seed}: NOT PRETRAINED"}, indent=2, default=str))
    return path
