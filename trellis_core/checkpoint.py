"""Checkpoint I/O compatible with the released TRELLIS files (MODELS.md 1.2-1.4).

A model lives at a path ``P`` (no extension) as ``P.json`` = ``{"name": <class>, "args": {...}}`` plus
``P.safetensors`` (the state dict, mixed F16/F32 as constructed). ``P`` may also be
``<owner>/<repo>/<rest>``: a Hugging Face Hub repo id followed by the file stem inside it.
``huggingface_hub`` is imported only when a download is needed; nothing downloads at import time.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from .registry import get_model_class

__all__ = ["from_pretrained", "save_pretrained", "load_model_config", "weights_sha256",
           "HubDownloadError", "resolve_model_files"]


class HubDownloadError(OSError):
    """The files of a model could not be found locally nor fetched from the Hugging Face Hub."""


def _download(repo_id: str, filename: str) -> str:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - huggingface_hub is a dependency
        raise HubDownloadError("huggingface_hub is required to load models by repo id") from e
    try:
        return hf_hub_download(repo_id=repo_id, filename=filename)
    except Exception as e:  # offline mode, no network, missing repo/file, auth ...
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = (" (HF_HUB_OFFLINE is set and the file is not in the local Hugging Face cache)"
                if offline else "")
        raise HubDownloadError(f"could not fetch {filename!r} from Hugging Face repo {repo_id!r}{hint}: "
                               f"{type(e).__name__}: {e}") from e


def resolve_model_files(path: Union[str, os.PathLike]) -> tuple:
    """``(json_path, safetensors_path)`` for a local stem or ``<owner>/<repo>/<rest>`` Hub path."""
    path = str(path)
    for ext in (".json", ".safetensors"):
        if path.endswith(ext):
            path = path[: -len(ext)]
    if os.path.exists(path + ".json") and os.path.exists(path + ".safetensors"):
        return path + ".json", path + ".safetensors"
    parts = path.strip("/").split("/")
    if len(parts) < 3 or os.path.isabs(path) or path.startswith("."):
        raise FileNotFoundError(f"no model at {path!r}: expected {path}.json and {path}.safetensors, "
                                "or a Hub path <owner>/<repo>/<file stem>")
    repo_id, rest = "/".join(parts[:2]), "/".join(parts[2:])
    return _download(repo_id, rest + ".json"), _download(repo_id, rest + ".safetensors")


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
