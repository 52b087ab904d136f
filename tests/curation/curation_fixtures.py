"""Builders of fixture data in each source's real layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from catalogs.stage import classify
from curation.sources.sample import build_sample


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def glb(name: str = "box") -> bytes:
    names = {"box": "uv_sphere", "chair": "chair", "table": "table", "torus": "torus", "star": "star", "cyl": "cylinder"}
    return build_sample(names.get(name, name))


def listing_csv(rows: list[dict[str, Any]]) -> bytes:
    out = []
    for r in rows:
        r = dict(r)
        caps = r.get("captions")
        r["captions"] = json.dumps(caps) if caps else None
        out.append(r)
    return pd.DataFrame(out).to_csv(index=False).encode()


def row(sha256: str, fid: str, score: float = 6.0, captions=("a thing",), **extra) -> dict[str, Any]:
    return {"sha256": sha256, "file_identifier": fid, "aesthetic_score": score,
            "captions": list(captions) if captions else None, **extra}


def zip_bytes(entries: Mapping[str, bytes | None], dirs: bool = False) -> bytes:
    """entries name -> bytes (None = directory entry)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        if dirs:
            seen = set()
            for name in entries:
                parts = name.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    d = "/".join(parts[:i]) + "/"
                    if d not in seen:
                        seen.add(d)
                        z.writestr(zipfile.ZipInfo(d), b"")
        for name, data in entries.items():
            if data is None:
                z.writestr(zipfile.ZipInfo(name.rstrip("/") + "/"), b"")
            else:
                z.writestr(name, data)
    return buf.getvalue()


def tar_bytes(entries: Mapping[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in entries.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def object_paths_gz(mapping: dict[str, str]) -> bytes:
    return gzip.compress(json.dumps(mapping).encode())


def run_source(src, dest: Path) -> dict[str, str]:
    """Listing -> fetch -> verify for every asset, like the ingest stage: sha -> 'ok' or error_type."""
    out: dict[str, str] = {}
    for rec in src.list_assets():
        row = rec.as_row()
        d = dest / rec.sha256[:12]
        d.mkdir(parents=True, exist_ok=True)
        try:
            p = src.fetch(row, d)
            src.verify(row, p)
            out[rec.sha256] = "ok"
        except Exception as exc:  # noqa: BLE001
            out[rec.sha256] = classify(exc)[0]
    return out


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
