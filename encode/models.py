"""Where the encode stages' models come from: resolution, naming, hashing, and tiny seeded models.

A model location (a stage param `model`) is one of
- a local folder (DINOv2: a transformers folder with config.json; TRELLIS encoders: a stem `P`
  with `P.json` + `P.safetensors`, as trellis_core saves them),
- a Hugging Face id (DINOv2: `owner/repo`; TRELLIS: `owner/repo/ckpts/<name>`, trellis_core's rule),
- `tiny:<kind>[:<seed>]` with kind `dinov2`, `ss_enc` or `slat_enc`: a tiny randomly initialised
  model built from a fixed seed into a local cache (TRELLIS_MODEL_CACHE, default
  ~/.cache/trellis_data/models) on first use. Tests and the demo use these; they are labelled
  "not pretrained" in the catalog.

The location never enters a fingerprint (the same weights may sit in different folders on
different machines); the weights' sha256 does. Names (the stage variants, TRELLIS's directory
names) come from, in order: an explicit name, a `trellis_data_model.json` side file written with
the model, the well-known Hub ids, the last path component.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIDE_FILE = "trellis_data_model.json"
"""Side file of a DINOv2 folder; a TRELLIS stem `P` has `P.trellis_data.json`."""

KNOWN_HUB_NAMES = {
    "facebook/dinov2-with-registers-large": "dinov2_vitl14_reg",
    "facebook/dinov2-with-registers-base": "dinov2_vitb14_reg",
    "facebook/dinov2-with-registers-small": "dinov2_vits14_reg",
    "facebook/dinov2-with-registers-giant": "dinov2_vitg14_reg",
}

TINY_DINOV2 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, mlp_ratio=2,
                   patch_size=14, image_size=518, num_register_tokens=4, layerscale_value=1.0)
"""Tiny DINOv2-with-registers: 37x37 patch grid at 518 px like ViT-L/14-reg, 64 channels."""

VITL14_REG = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, mlp_ratio=4,
                  patch_size=14, image_size=518, num_register_tokens=4, layerscale_value=1.0)
"""The architecture of dinov2_vitl14_reg (for random-init benchmarks; weights come from the Hub)."""

TINY_SS_ENC = {"name": "SparseStructureEncoder", "args": {
    "in_channels": 1, "latent_channels": 8, "num_res_blocks": 1, "num_res_blocks_middle": 1,
    "channels": [8, 16, 32], "use_fp16": False}}
TINY_SLAT_ENC = {"name": "SLatEncoder", "args": {
    "resolution": 64, "in_channels": TINY_DINOV2["hidden_size"], "model_channels": 64, "latent_channels": 8,
    "num_blocks": 2, "num_heads": 2, "mlp_ratio": 2, "attn_mode": "swin", "window_size": 8, "use_fp16": False}}
TINY_NAMES = {"dinov2": "dinov2_tiny", "ss_enc": "ss_enc_tiny", "slat_enc": "slat_enc_tiny"}

DINO_CONFIG_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "mlp_ratio", "patch_size", "image_size", "num_channels", "num_register_tokens", "layerscale_value",
                    "layer_norm_eps", "hidden_act", "qkv_bias", "use_swiglu_ffn")
"""The config.json entries that define the network (noise such as transformers_version is left out)."""


class ModelUnavailable(RuntimeError):
    """A model location that is neither a local model nor fetchable (e.g. offline, unknown id)."""


_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def safe_name(s: str) -> str:
    return _NAME_SAFE.sub("_", s).strip("._-") or "model"


def cache_dir() -> Path:
    return Path(os.environ.get("TRELLIS_MODEL_CACHE") or Path.home() / ".cache" / "trellis_data" / "models")


# -- tiny seeded models -----------------------------------------------------------------------
def parse_tiny(location: str) -> tuple[str, int] | None:
    if not location.startswith("tiny:"):
        return None
    parts = location.split(":")
    kind = parts[1] if len(parts) > 1 else ""
    if kind not in TINY_NAMES or len(parts) > 3:
        raise ValueError(f"bad tiny model location {location!r}: use tiny:<{'|'.join(TINY_NAMES)}>[:<seed>]")
    return kind, int(parts[2]) if len(parts) == 3 else 0


def _write_side(path: Path, name: str, seed: int, kind: str) -> None:
    path.write_text(json.dumps({"name": name, "pretrained": False, "seed": seed, "kind": kind,
                                "note": f"tiny {kind} model, random init with seed {seed}: NOT PRETRAINED"}, indent=2))


def make_tiny_dinov2(folder: str | os.PathLike, seed: int = 0, name: str = TINY_NAMES["dinov2"], **overrides) -> Path:
    """A tiny DINOv2-with-registers, random init from `seed`, saved with save_pretrained."""
    import torch
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    folder = Path(folder)
    torch.manual_seed(seed)
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**{**TINY_DINOV2, **overrides})).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    _write_side(folder / SIDE_FILE, name, seed, "dinov2")
    return folder


def _make_trellis(stem: str | os.PathLike, config: dict, seed: int, name: str, kind: str, **overrides) -> Path:
    import torch

    from trellis_core import get_model_class, save_pretrained

    stem = Path(stem)
    torch.manual_seed(seed)
    model = get_model_class(config["name"])(**{**config["args"], **overrides}).eval()
    save_pretrained(model, str(stem))
    _write_side(Path(str(stem) + ".trellis_data.json"), name, seed, kind)
    return stem


def make_tiny_ss_encoder(stem: str | os.PathLike, seed: int = 0, name: str = TINY_NAMES["ss_enc"], **overrides) -> Path:
    return _make_trellis(stem, TINY_SS_ENC, seed, name, "ss_enc", **overrides)


def make_tiny_slat_encoder(stem: str | os.PathLike, seed: int = 0, name: str = TINY_NAMES["slat_enc"], **overrides) -> Path:
    return _make_trellis(stem, TINY_SLAT_ENC, seed, name, "slat_enc", **overrides)


_LOCK = threading.Lock()


def materialize_tiny(kind: str, seed: int) -> Path:
    """The local path of `tiny:<kind>:<seed>`, building it once (atomic rename; safe across processes)."""
    tag = hashlib.sha256(json.dumps([TINY_DINOV2, TINY_SS_ENC, TINY_SLAT_ENC], sort_keys=True).encode()).hexdigest()[:8]
    base = cache_dir() / f"{kind}_s{seed}_{tag}"
    target = base if kind == "dinov2" else base / TINY_NAMES[kind]
    done = base / ".complete"
    with _LOCK:
        if done.exists():
            return target
        base.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{base.name}.tmp-", dir=base.parent))
        try:
            if kind == "dinov2":
                make_tiny_dinov2(tmp, seed)
            elif kind == "ss_enc":
                make_tiny_ss_encoder(tmp / TINY_NAMES[kind], seed)
            else:
                make_tiny_slat_encoder(tmp / TINY_NAMES[kind], seed)
            (tmp / ".complete").write_text("ok")
            try:
                os.rename(tmp, base)
            except OSError:  # another process won the race; its copy is identical
                pass
        finally:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
    return target


def make_demo_models(folder: str | os.PathLike, seed: int = 0) -> dict[str, Path]:
    """The three tiny models of the demo in one folder: {dinov2, ss_enc, slat_enc} -> location."""
    folder = Path(folder)
    return {"dinov2": make_tiny_dinov2(folder / TINY_NAMES["dinov2"], seed),
            "ss_enc": make_tiny_ss_encoder(folder / TINY_NAMES["ss_enc"], seed),
            "slat_enc": make_tiny_slat_encoder(folder / TINY_NAMES["slat_enc"], seed)}


# -- resolution -------------------------------------------------------------------------------
_HASH_CACHE: dict[tuple, str] = {}


def _file_key(paths: list[Path]) -> tuple:
    return tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


@dataclass
class ModelRef:
    """A resolved model: local files, display name, provenance. `family` is 'dinov2' or 'trellis'."""

    location: str
    family: str
    path: Path
    name: str
    pretrained: bool
    note: str = ""
    side: dict[str, Any] = field(default_factory=dict)

    # files ---------------------------------------------------------------------------------------
    def weight_files(self) -> list[Path]:
        if self.family == "trellis":
            return [Path(str(self.path) + ".safetensors")]
        files = sorted(self.path.glob("*.safetensors"))
        return files or sorted(self.path.glob("*.bin"))

    def weights_sha256(self) -> str:
        """Content hash of the weights (trellis_core's tensor hash; raw bytes for .bin files)."""
        from trellis_core import weights_sha256

        files = self.weight_files()
        if not files:
            raise ModelUnavailable(f"{self.location}: no weight files in {self.path}")
        key = _file_key(files)
        if key not in _HASH_CACHE:
            digests = []
            for f in files:
                if f.suffix == ".safetensors":
                    digests.append(weights_sha256(str(f)))
                else:
                    h = hashlib.sha256()
                    with open(f, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 24), b""):
                            h.update(chunk)
                    digests.append(h.hexdigest())
            _HASH_CACHE[key] = digests[0] if len(digests) == 1 else hashlib.sha256(
                "\n".join(f"{f.name}:{d}" for f, d in zip(files, digests)).encode()).hexdigest()
        return _HASH_CACHE[key]

    def config(self) -> dict[str, Any]:
        """The network-defining config: DINOv2's config.json entries, or the TRELLIS `{name, args}`."""
        if self.family == "trellis":
            return json.loads(Path(str(self.path) + ".json").read_text())
        cfg = json.loads((self.path / "config.json").read_text())
        return {k: cfg[k] for k in DINO_CONFIG_KEYS if k in cfg}

    def info(self) -> dict[str, Any]:
        """What `Stage.model_info()` hands the executor for the catalog's `models` table."""
        return {"weights_sha256": self.weights_sha256(), "config": self.config(), "source": self.location,
                "pretrained": self.pretrained, "note": self.note}


def _side_info(p: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        return json.loads(p.read_text())
    return {}


def default_name(location: str, family: str) -> str:
    """The variant name of a location without touching the network."""
    tiny = parse_tiny(location)
    if tiny:
        return TINY_NAMES[tiny[0]]
    p = Path(location).expanduser()
    side = p / SIDE_FILE if family == "dinov2" else Path(str(p) + ".trellis_data.json")
    info = _side_info(side)
    if info.get("name"):
        return safe_name(info["name"])
    if location in KNOWN_HUB_NAMES:
        return KNOWN_HUB_NAMES[location]
    stem = location.rstrip("/").removesuffix(".json").removesuffix(".safetensors")
    return safe_name(stem.rsplit("/", 1)[-1])


def resolve(location: str, family: str, name: str | None = None) -> ModelRef:
    """Local files of a model location (materialises tiny models, fetches Hub ids if allowed)."""
    if family not in ("dinov2", "trellis"):
        raise ValueError(f"unknown model family {family!r}")
    tiny = parse_tiny(location)
    if tiny:
        kind, seed = tiny
        if (kind == "dinov2") != (family == "dinov2"):
            raise ValueError(f"{location!r} is not a {family} model")
        path = materialize_tiny(kind, seed)
    elif family == "dinov2":
        path = _resolve_dinov2_folder(location)
    else:
        path = _resolve_trellis_stem(location)
    side = _side_info(path / SIDE_FILE if family == "dinov2" else Path(str(path) + ".trellis_data.json"))
    hub = not tiny and not Path(location).expanduser().exists()
    pretrained = bool(side.get("pretrained", True))
    note = side.get("note") or ("from the Hugging Face Hub" if hub else "local folder, provenance not recorded")
    return ModelRef(location, family, path, safe_name(name) if name else default_name(location, family),
                    pretrained, note, side)


def _offline_hint() -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return ("HF_HUB_OFFLINE is set and the model is not in the local Hugging Face cache" if offline
            else "no network or no such repo")


def _resolve_dinov2_folder(location: str) -> Path:
    p = Path(location).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelUnavailable(f"{location}: folder has no config.json (not a transformers model folder)")
        return p
    if p.is_absolute() or location.startswith(".") or location.count("/") != 1:
        raise ModelUnavailable(f"DINOv2 model {location!r} is neither a local folder nor a Hub id 'owner/repo'")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(location, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:
        raise ModelUnavailable(f"DINOv2 model {location!r} is not a local folder and could not be fetched from "
                               f"the Hugging Face Hub ({_offline_hint()}): {type(exc).__name__}: {exc}") from exc


def _resolve_trellis_stem(location: str) -> Path:
    from trellis_core.checkpoint import resolve_model_files

    stem = location.removesuffix(".json").removesuffix(".safetensors")
    try:
        js, _ = resolve_model_files(stem)
    except Exception as exc:
        raise ModelUnavailable(f"TRELLIS model {location!r} is not a local P.json + P.safetensors pair and could not "
                               f"be fetched from the Hugging Face Hub ({_offline_hint()}): {exc}") from exc
    return Path(js[: -len(".json")])
