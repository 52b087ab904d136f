"""Model locations: where a model's files are, which exact files they are, and what they are.

A location is one of
- a local path: a transformers folder (``config.json`` + weights), a TRELLIS stem ``P``
  (``P.json`` + ``P.safetensors``, as ``save_pretrained`` writes it), or one weights file;
- a Hugging Face Hub reference ``owner/repo[@revision][/path]``: a folder model is the repository
  (or ``path``, a sub-folder of it), a TRELLIS model the stem ``path`` inside it, a weights file
  the file ``path``;
- ``tiny:<kind>[:<seed>]``: a tiny seeded model of the registry (``trellis_core.models.tiny``),
  built once into the local cache (``TRELLIS_MODEL_CACHE``, default ~/.cache/trellis_data/models).

Hub references resolve to a **pinned revision**: the commit the files came from (the snapshot
folder ``huggingface_hub`` keeps them under). A planner that resolved ``owner/repo`` at commit C
hands C to its workers, which download exactly that commit, so a repository that moves during a
build cannot give one fingerprint two sets of weights. ``HF_ENDPOINT`` is read at call time (a
mirror, or a loopback server in tests); nothing touches the network at import time.

The weights hash is trellis_core's tensor-content hash for ``.safetensors`` (independent of the
container) and the sha256 of the bytes for other weight files; several files combine by name.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .models.tiny import SIDE_FILE, TINY_KINDS, save_tiny, side_file

__all__ = ["ModelRef", "ModelUnavailable", "HubDownloadError", "resolve", "default_name", "parse_tiny", "parse_hub", "tiny_path",
           "cache_dir", "safe_name", "file_sha256", "Family", "TRANSFORMERS", "TRELLIS", "FILE", "FAMILIES",
           "KNOWN_HUB_NAMES", "SIDE_FILE"]

FAMILIES = ("transformers", "trellis", "file")
"""On-disk forms: a transformers folder, a TRELLIS ``P.json`` + ``P.safetensors`` stem, one weights file."""

KNOWN_HUB_NAMES = {
    "facebook/dinov2-with-registers-large": "dinov2_vitl14_reg",
    "facebook/dinov2-with-registers-base": "dinov2_vitb14_reg",
    "facebook/dinov2-with-registers-small": "dinov2_vits14_reg",
    "facebook/dinov2-with-registers-giant": "dinov2_vitg14_reg",
}
"""Hub repositories whose files the TRELLIS toolkit names otherwise (its feature directory names)."""

VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "torch_dtype", "dtype")
"""config.json entries that say how a folder was written, not what the network is."""

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


class ModelUnavailable(FileNotFoundError):
    """A model location that is neither local nor fetchable (offline, unknown repo or file)."""


class HubDownloadError(ModelUnavailable):
    """The files of a Hub reference could not be fetched (offline, missing repo or file, gated)."""


def safe_name(s: str) -> str:
    return _NAME_SAFE.sub("_", s).strip("._-") or "model"


def cache_dir() -> Path:
    return Path(os.environ.get("TRELLIS_MODEL_CACHE") or Path.home() / ".cache" / "trellis_data" / "models")


# -- grammar ------------------------------------------------------------------------------------------
def parse_tiny(location: str) -> Optional[Tuple[str, int]]:
    """(kind, seed) of ``tiny:<kind>[:<seed>]``, None for any other location."""
    if not location.startswith("tiny:"):
        return None
    parts = location.split(":")
    kind = parts[1] if len(parts) > 1 else ""
    if kind not in TINY_KINDS or len(parts) > 3 or (len(parts) == 3 and not parts[2].isdigit()):
        raise ValueError(f"bad tiny model location {location!r}: use tiny:<{'|'.join(sorted(TINY_KINDS))}>[:<seed>]")
    return kind, int(parts[2]) if len(parts) == 3 else 0


def parse_hub(location: str) -> Tuple[str, Optional[str], str]:
    """(repo id, revision or None, path inside the repo) of ``owner/repo[@revision][/path]``."""
    parts = location.strip("/").split("/")
    if len(parts) < 2 or location.startswith((".", "/", "~")) or not all(parts):
        raise ModelUnavailable(f"{location!r} is neither a local model nor a Hub reference owner/repo[@revision][/path]")
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", revision or None, "/".join(parts[2:])


def _local(location: str, family: str) -> Optional[Path]:
    p = Path(location).expanduser()
    if family == "trellis":
        stem = Path(str(p).removesuffix(".json").removesuffix(".safetensors"))
        return stem if Path(f"{stem}.json").exists() and Path(f"{stem}.safetensors").exists() else None
    if family == "transformers":
        if p.is_dir():
            if not (p / "config.json").exists():
                raise ModelUnavailable(f"{location}: folder has no config.json (not a transformers model folder)")
            return p
        return None
    return p if p.is_file() else None


# -- tiny models ----------------------------------------------------------------------------------------
_LOCK = threading.Lock()


def tiny_path(kind: str, seed: int) -> Path:
    """The local path of ``tiny:<kind>:<seed>``, written once (atomic rename; safe across processes)."""
    tiny = TINY_KINDS[kind]
    tag = hashlib.sha256(json.dumps([tiny.family, tiny.config], sort_keys=True, default=str).encode()).hexdigest()[:8]
    base = cache_dir() / f"{kind}_s{seed}_{tag}"
    leaf = "model" if tiny.family == "transformers" else tiny.name
    with _LOCK:
        if not (base / ".complete").exists():
            base.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{base.name}.tmp-", dir=base.parent))
            try:
                save_tiny(kind, tmp / leaf, seed)
                (tmp / ".complete").write_text("ok")
                try:
                    os.rename(tmp, base)
                except OSError:  # another process won the race; its copy is identical
                    pass
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    return base / leaf


# -- the Hub --------------------------------------------------------------------------------------------
def _offline_hint() -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return ("HF_HUB_OFFLINE is set and the files are not in the local Hugging Face cache" if offline
            else "no network, no such repository or file, or no access")


def _snapshot_commit(path: str) -> str:
    """The commit of a file or folder in the Hugging Face cache (``.../snapshots/<commit>/...``)."""
    parts = Path(path).parts
    if "snapshots" in parts:
        commit = parts[parts.index("snapshots") + 1]
        if _COMMIT.match(commit):
            return commit
    raise ModelUnavailable(f"{path} is not inside a Hugging Face cache snapshot: cannot tell its revision")


def _fetch(location: str, family: str, revision: Optional[str]) -> Tuple[Path, str]:
    """Local path + pinned commit of a Hub reference, downloading what is missing."""
    repo, rev, sub = parse_hub(location)
    rev = revision or rev
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        if family == "transformers":
            prefix = f"{sub}/" if sub else ""
            folder = snapshot_download(repo, revision=rev, endpoint=endpoint, allow_patterns=[
                f"{prefix}*.{ext}" for ext in ("json", "safetensors", "txt")])
            commit = _snapshot_commit(folder)
            return Path(folder) / sub if sub else Path(folder), commit
        if not sub:
            raise ModelUnavailable(f"{location!r}: a {family} model on the Hub needs the path inside the repo "
                                   f"(owner/repo[@revision]/path)")
        if family == "trellis":
            stem = sub.removesuffix(".json").removesuffix(".safetensors")
            js = hf_hub_download(repo, f"{stem}.json", revision=rev, endpoint=endpoint)
            commit = _snapshot_commit(js)  # the weights come from the very commit the config came from
            hf_hub_download(repo, f"{stem}.safetensors", revision=commit, endpoint=endpoint)
            return Path(js[: -len(".json")]), commit
        f = hf_hub_download(repo, sub, revision=rev, endpoint=endpoint)
        return Path(f), _snapshot_commit(f)
    except ModelUnavailable:
        raise
    except Exception as exc:  # offline, missing repo or file, gated, ...
        raise HubDownloadError(f"{family} model {location!r}{'@' + rev if rev else ''} is not local and could not "
                               f"be fetched from the Hugging Face Hub ({_offline_hint()}): "
                               f"{type(exc).__name__}: {exc}") from exc


# -- resolved models ------------------------------------------------------------------------------------
_HASH_CACHE: Dict[tuple, str] = {}


def _file_key(paths: List[Path]) -> tuple:
    return tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelRef:
    """A resolved model: local files, name, provenance and (for the Hub) the pinned revision."""

    location: str
    family: str
    path: Path
    name: str
    pretrained: bool
    note: str = ""
    revision: Optional[str] = None
    side: Dict[str, Any] = field(default_factory=dict)

    def weight_files(self) -> List[Path]:
        if self.family == "trellis":
            return [Path(f"{self.path}.safetensors")]
        if self.family == "file":
            return [self.path]
        files = sorted(self.path.glob("*.safetensors"))
        return files or sorted(self.path.glob("*.bin"))

    def weights_sha256(self) -> str:
        """Content hash of the weights (cached per file path, size and mtime)."""
        from .checkpoint import weights_sha256

        files = self.weight_files()
        if not files:
            raise ModelUnavailable(f"{self.location}: no weight files in {self.path}")
        key = _file_key(files)
        if key not in _HASH_CACHE:
            digests = [weights_sha256(str(f)) if f.suffix == ".safetensors" else file_sha256(f) for f in files]
            _HASH_CACHE[key] = digests[0] if len(digests) == 1 else hashlib.sha256(
                "\n".join(f"{f.name}:{d}" for f, d in zip(files, digests)).encode()).hexdigest()
        return _HASH_CACHE[key]

    def config(self) -> Dict[str, Any]:
        """What defines the network: config.json (minus how it was written), the TRELLIS ``{name, args}``,
        or, for a weights file, its name."""
        if self.family == "trellis":
            return json.loads(Path(f"{self.path}.json").read_text())
        if self.family == "file":
            return {"file": self.path.name}
        cfg = json.loads((self.path / "config.json").read_text())
        return {k: v for k, v in cfg.items() if k not in VOLATILE_CONFIG_KEYS}

    @property
    def source(self) -> str:
        """The location with its pinned revision: what a catalog reader needs to fetch the same files."""
        if self.revision is None:
            return self.location
        repo, _, sub = parse_hub(self.location)
        return f"{repo}@{self.revision}" + (f"/{sub}" if sub else "")

    def info(self) -> Dict[str, Any]:
        """{weights_sha256, config, source, revision, pretrained, note}: one row of the catalog's `models`."""
        return {"weights_sha256": self.weights_sha256(), "config": self.config(), "source": self.source,
                "revision": self.revision, "pretrained": self.pretrained, "note": self.note}


def _side_info(p: Path) -> Dict[str, Any]:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def default_name(location: str, family: str) -> str:
    """The name (stage variant) of a location without touching the network: the tiny kind's name, the
    side file's name, the well-known Hub names, else the last path component."""
    tiny = parse_tiny(location)
    if tiny:
        return TINY_KINDS[tiny[0]].name
    try:
        local = _local(location, family)
    except ModelUnavailable:
        local = None
    if local is not None:
        info = _side_info(side_file(local, family))
        if info.get("name"):
            return safe_name(info["name"])
    bare = location.split("@", 1)[0] if location.count("/") == 1 else location
    if bare in KNOWN_HUB_NAMES:
        return KNOWN_HUB_NAMES[bare]
    stem = location.rstrip("/").removesuffix(".json").removesuffix(".safetensors")
    return safe_name(stem.rsplit("/", 1)[-1].split("@", 1)[0])


def resolve(location: str, family: str, name: Optional[str] = None, revision: Optional[str] = None) -> ModelRef:
    """Local files of ``location`` (writes tiny models, fetches Hub references at ``revision`` if given,
    else at the location's own revision, else the default branch, and pins the commit)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {FAMILIES}")
    pinned = None
    tiny = parse_tiny(location)
    if tiny:
        if TINY_KINDS[tiny[0]].family != family:
            raise ValueError(f"{location!r} is a {TINY_KINDS[tiny[0]].family} model, not a {family} one")
        path = tiny_path(*tiny)
    else:
        local = _local(location, family)
        path, pinned = (local, None) if local is not None else _fetch(location, family, revision)
    side = _side_info(side_file(path, family))
    pretrained = bool(side.get("pretrained", True))
    note = side.get("note") or ("from the Hugging Face Hub" if pinned else "local files, provenance not recorded")
    return ModelRef(location, family, path, safe_name(name) if name else default_name(location, family),
                    pretrained, note, pinned, side)



@dataclass(frozen=True)
class Family:
    """Locations of one on-disk form (what a model stage maps each of its location params to)."""

    name: str

    def resolve(self, location: str, name: Optional[str] = None, revision: Optional[str] = None) -> ModelRef:
        return resolve(location, self.name, name, revision)

    def default_name(self, location: str) -> str:
        return default_name(location, self.name)


TRANSFORMERS, TRELLIS, FILE = Family("transformers"), Family("trellis"), Family("file")
