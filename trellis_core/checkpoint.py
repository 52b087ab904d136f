"""Checkpoint I/O compatible with the released TRELLIS files (MODELS.md 1.2-1.4).

A model lives at a path ``P`` (no extension) as ``P.json`` = ``{"name": <class>, "args": {...}}`` plus
``P.safetensors`` (the state dict, mixed F16/F32 as constructed). ``P`` may also be any location of
``trellis_core.locations`` (``<owner>/<repo>[@revision]/<stem>`` on the Hub, ``tiny:<kind>``);
``huggingface_hub`` is imported only when a download is needed; nothing downloads at import time.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from .locations import HubDownloadError, resolve
from .registry import get_model_class

__all__ = ["from_pretrained", "save_pretrained", "load_model_config", "weights_sha256",
           "HubDownloadError", "resolve_model_files"]


def resolve_model_files(path: Union[str, os.PathLike]) -> tuple:
    """``(json_path, safetensors_path)`` of a local stem, an ``<owner>/<repo>[@revision]/<stem>`` Hub
    reference or a ``tiny:`` kind (``trellis_core.locations``)."""
    stem = resolve(str(path), "trellis").path
    return f"{stem}.json", f"{stem}.safetensors"


def load_model_config(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    json_path, _ = resolve_model_files(path)
    with open(json_path) as f:
        return json.load(f)


def from_pretrained(path: Union[str, os.PathLike], device: Union[str, torch.device, None] = None,
                    strict: bool = True, **kwargs):
    """Build the model named in ``P.json`` with its args (``kwargs`` override/extend them) and
    load ``P.safetensors`` with strict key matching; returns the model in eval mode."""
    from safetensors.torch import load_file

    json_path, st_path = resolve_model_files(path)
    with open(json_path) as f:
        cfg = json.load(f)
    cls = get_model_class(cfg["name"])
    args = dict(cfg.get("args", {}))
    args.update(kwargs)
    model = cls(**args)
    state = load_file(st_path)
    model.load_state_dict(state, strict=strict)  # copies into the typed params: keeps the fp16/fp32 split
    if device is not None:
        model.to(device)
    return model.eval()


def save_pretrained(model: torch.nn.Module, path: Union[str, os.PathLike]) -> None:
    """Write ``P.json`` and ``P.safetensors`` (same layout as the released files)."""
    from safetensors.torch import save_file

    path = str(path)
    for ext in (".json", ".safetensors"):
        if path.endswith(ext):
            path = path[: -len(ext)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cfg = {"name": type(model).__name__, "args": getattr(model, "config", {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp_st, tmp_js = path + ".safetensors.tmp", path + ".json.tmp"
    save_file(state, tmp_st)
    with open(tmp_js, "w") as f:
        json.dump(cfg, f, indent=4)
    os.replace(tmp_st, path + ".safetensors")
    os.replace(tmp_js, path + ".json")


def weights_sha256(weights: Union[Mapping[str, torch.Tensor], torch.nn.Module, str, os.PathLike]) -> str:
    """Content hash of a set of weights, independent of file order and container.

    Over the keys in sorted order: key, dtype, shape and the raw little-endian bytes of each tensor.
    Accepts a state dict, a module, a ``.safetensors`` file or a model stem ``P`` (uses
    ``P.safetensors``); all give the same hash for the same tensors."""
    if isinstance(weights, torch.nn.Module):
        weights = weights.state_dict()
    h = hashlib.sha256()

    def feed(key: str, t: torch.Tensor):
        t = t.detach().cpu().contiguous()
        h.update(key.encode("utf-8") + b"\0")
        h.update(str(t.dtype).replace("torch.", "").encode() + b"\0")
        h.update(json.dumps(list(t.shape)).encode() + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    if isinstance(weights, (str, os.PathLike)):
        p = str(weights)
        if not p.endswith(".safetensors"):
            p = p + ".safetensors"
        from safetensors import safe_open
        with safe_open(p, framework="pt") as f:
            for key in sorted(f.keys()):
                feed(key, f.get_tensor(key))
    else:
        for key in sorted(weights):
            feed(key, weights[key])
    return h.hexdigest()
