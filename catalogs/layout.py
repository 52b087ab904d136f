"""Root-relative names of every artifact, in the TRELLIS toolkit's layout (DATA_FORMATS.md §0).

One place names files, so stages, reconcile and export agree. Asset ids that reach a path are
checked to be sha256 hex, so no id can escape the store root.
"""

from __future__ import annotations

import re

_SHA = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

CATALOG_DIR = "catalog"
"""Parquet snapshots and record logs of the catalog (not part of the TRELLIS layout)."""


def check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA.match(sha256):
        raise ValueError(f"asset id is not a sha256 hex digest: {sha256!r}")
    return sha256


def check_name(name: str) -> str:
    """Model / variant / source names used as directory names."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(f"not a safe directory name: {name!r}")
    return name


def raw(source: str, sha256: str, ext: str) -> str:
    ext = ext.lower().lstrip(".")
    if not re.match(r"^[a-z0-9]{1,8}$", ext):
        raise ValueError(f"unsafe file extension {ext!r}")
    return f"raw/{check_name(source)}/{check_sha(sha256)}.{ext}"


def meshes(sha256: str) -> str:
    """Normalized mesh from the trimesh path (the Blender path writes renders/<sha>/mesh.ply)."""
    return f"meshes/{check_sha(sha256)}.ply"


def canonical(sha256: str) -> str:
    """Canonical normalized form of an asset for the GPU render tier: model.glb, mesh.ply, canonical.json."""
    return f"canonical/{check_sha(sha256)}"


def renders(sha256: str) -> str:
    return f"renders/{check_sha(sha256)}"


def renders_cond(sha256: str) -> str:
    return f"renders_cond/{check_sha(sha256)}"


def voxels(sha256: str) -> str:
    return f"voxels/{check_sha(sha256)}.ply"


def features(model: str, sha256: str) -> str:
    return f"features/{check_name(model)}/{check_sha(sha256)}.npz"


def ss_latents(model: str, sha256: str) -> str:
    return f"ss_latents/{check_name(model)}/{check_sha(sha256)}.npz"


def latents(model: str, sha256: str) -> str:
    return f"latents/{check_name(model)}/{check_sha(sha256)}.npz"


def latent_stats(model: str) -> str:
    return f"latents/{check_name(model)}/stats.json"
