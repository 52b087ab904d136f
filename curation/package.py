"""Asset packages: a model file travels with its side files (mtl, textures, buffers) in one zip.

Some assets are not one self-contained file: a 3D-FUTURE model is `raw_model.obj` + `model.mtl` +
`texture.png`; a GitHub `.obj`/`.gltf` references files beside it. The ingest stage stores one file
per asset, so such assets are packaged as a zip whose `trellis_package.json` names the entry:

    {"entry": "raw_model.obj", "identity": "image.jpg", "format": "obj"}

`identity` is the member whose sha256 is the asset id when that is not the entry (3D-FUTURE, G17).
Downstream stages call `open_asset(path)` and get a local path of the mesh to load, whatever the
stored file is. Dependencies are found by reading the model file (`mtllib`/`map_*` for OBJ,
`buffers`/`images` URIs for glTF) and resolved relative to it; a reference that leaves the
archive root is ignored (never followed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import posixpath
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

from curation.extract import DEFAULT_LIMITS, SafeArchive, check_name

MANIFEST = "trellis_package.json"
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def is_package(path: str | Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return MANIFEST in z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def read_manifest(path: str | Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read(MANIFEST))


def write_package(dest: str | Path, files: dict[str, bytes | Path], entry: str, identity: str | None = None,
                  extra: dict | None = None) -> Path:
    """Write a deterministic package zip: sorted members, fixed timestamps, a manifest.

    Deterministic bytes mean the same model always packages to the same file."""
    dest = Path(dest)
    manifest = {"entry": entry, "format": posixpath.splitext(entry)[1].lstrip(".").lower()}
    if identity:
        manifest["identity"] = identity
    if extra:
        manifest.update(extra)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
        zi = zipfile.ZipInfo(MANIFEST, _FIXED_TIME)
        zi.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(zi, json.dumps(manifest, sort_keys=True))
        for name in sorted(files):
            check_name(name)
            data = files[name]
            zi = zipfile.ZipInfo(name, _FIXED_TIME)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            z.writestr(zi, data if isinstance(data, bytes) else Path(data).read_bytes())
    return dest


def member_sha256(path: str | Path, member: str) -> str:
    with SafeArchive(path) as a:
        return hashlib.sha256(a.read(member)).hexdigest()


@contextlib.contextmanager
def open_asset(path: str | Path) -> Iterator[Path]:
    """A local path of the model to load: the file itself, or the entry of an unpacked package."""
    path = Path(path)
    if not is_package(path):
        yield path
        return
    entry = read_manifest(path)["entry"]
    with tempfile.TemporaryDirectory(prefix="trellis-pkg-") as d:
        with SafeArchive(path) as a:
            a.extract(d)
        yield Path(d) / entry


# -- dependency discovery ------------------------------------------------------------------------
_OBJ_MTLLIB = re.compile(rb"^\s*mtllib\s+(.+?)\s*$", re.M)
_MTL_MAP = re.compile(rb"^\s*(?:map_\w+|bump|disp|decal|refl|norm)\s+(.+?)\s*$", re.M | re.I)


def _last_token(arg: bytes) -> str:
    # Options such as "-bm 1.0 tex.png" precede the file name; names may contain spaces, so take the
    # text after the last option value when options are present.
    s = arg.decode("utf-8", "replace").strip()
    toks = s.split()
    if toks and toks[0].startswith("-"):
        i = 0
        while i < len(toks) and toks[i].startswith("-"):
            i += 1
            while i < len(toks) and _is_number(toks[i]):
                i += 1
            if i < len(toks) and toks[i - 1] in ("-clamp", "-blendu", "-blendv", "-cc", "-imfchan", "-type"):
                i += 1
        return " ".join(toks[i:])
    return s


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _resolve(base_dir: str, ref: str) -> str | None:
    ref = unquote(ref.strip().strip('"')).replace("\\", "/")
    if not ref or ref.startswith(("data:", "http://", "https://")) or ref.startswith("/") or re.match(r"^[A-Za-z]:", ref):
        return None
    p = posixpath.normpath(posixpath.join(base_dir, ref))
    if p == ".." or p.startswith("../"):
        return None
    return p


def dependencies(entry: str, read: Callable[[str], bytes | None]) -> list[str]:
    """Side files of `entry` (posix path inside some root), found by reading through `read(name)`
    (returns None when the file does not exist). Missing references are skipped."""
    out: list[str] = []
    seen = {entry}
    ext = posixpath.splitext(entry)[1].lower()
    base = posixpath.dirname(entry)

    def add(name: str | None) -> bytes | None:
        if not name or name in seen:
            return None
        seen.add(name)
        data = read(name)
        if data is not None:
            out.append(name)
        return data

    data = read(entry)
    if data is None:
        return out
    if ext == ".obj":
        for m in _OBJ_MTLLIB.finditer(data):
            for mtl_name in _split_mtllib(m.group(1)):
                mtl = add(_resolve(base, mtl_name))
                if mtl is None:
                    continue
                mbase = base
                for t in _MTL_MAP.finditer(mtl):
                    add(_resolve(mbase, _last_token(t.group(1))))
    elif ext == ".gltf":
        try:
            doc = json.loads(data)
        except ValueError:
            return out
        for key in ("buffers", "images"):
            for item in doc.get(key) or []:
                uri = item.get("uri") if isinstance(item, dict) else None
                if isinstance(uri, str):
                    add(_resolve(base, uri))
    return out


def _split_mtllib(arg: bytes) -> list[str]:
    s = arg.decode("utf-8", "replace").strip()
    # Usually one file; several are space separated. Prefer the whole string if it ends in .mtl.
    if s.lower().endswith(".mtl") and s.count(".mtl") == 1:
        return [s]
    return [t for t in s.split() if t]


def package_from_archive(archive: SafeArchive, entry: str, dest_dir: Path, root: str = "",
                         identity: str | None = None, extra_files: list[str] | None = None,
                         manifest_extra: dict | None = None) -> Path:
    """Package `root/entry` and its dependencies (and `extra_files`) out of an open archive.
    Names inside the package are relative to `root`. Returns the package path."""
    pre = (root.strip("/") + "/") if root else ""
    cache: dict[str, bytes | None] = {}

    def read(name: str) -> bytes | None:
        if name not in cache:
            full = pre + name
            cache[name] = archive.read(full) if archive.has(full) else None
        return cache[name]

    deps = dependencies(entry, read)
    files: dict[str, bytes | Path] = {}
    for name in [entry, *deps, *(extra_files or [])]:
        data = read(name)
        if data is not None:
            files[name] = data
    stem = posixpath.basename(entry)
    return write_package(Path(dest_dir) / f"{stem}.zip", files, entry=entry, identity=identity, extra=manifest_extra)


__all__ = ["MANIFEST", "is_package", "read_manifest", "write_package", "open_asset", "member_sha256",
           "dependencies", "package_from_archive", "DEFAULT_LIMITS"]
