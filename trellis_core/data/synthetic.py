"""A small demo-like dataset for tests and benchmarks: simple shapes written in the TRELLIS layout
with catalog rows, the way the pipeline's stages would leave them.

Per asset: ``voxels/<sha>.ply`` (shell voxels of a sphere / box / torus at 64³),
``ss_latents/<ss_model>/<sha>.npz`` (``mean`` (8, 16, 16, 16): fixed random linear maps of the 4³-pooled
occupancy, so it carries the shape), ``latents/<slat_model>/<sha>.npz`` (``coords`` uint8, ``feats``
(N, 8): smooth functions of position + a per-asset code), ``renders_cond/<sha>/000.png…`` (RGBA
silhouettes) + ``transforms.json``, and ``features/<feat_model>/<sha>.npz`` when asked. The latents are
synthetic (not produced by an encoder); the formats are exactly DATA_FORMATS §4-§7.
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Dict, List, Optional

import numpy as np

__all__ = ["make_shape", "write_demo_dataset", "SS_MODEL", "SLAT_MODEL", "FEAT_MODEL"]

SS_MODEL = "ss_enc_conv3d_16l8_fp16"
FEAT_MODEL = "dinov2_vitl14_reg"
SLAT_MODEL = "dinov2_vitl14_reg_slat_enc_swin8_B_64l8_fp16"


def make_shape(kind: str, rng: np.random.Generator, res: int = 64, size: Optional[float] = None) -> np.ndarray:
    """Shell voxels (M, 3) uint8 of a shape centred near the middle of the grid."""
    g = (np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1) + 0.5) / res - 0.5
    c = rng.uniform(-0.08, 0.08, 3)
    s = size if size is not None else rng.uniform(0.15, 0.4)
    p = g - c
    if kind == "sphere":
        d = np.linalg.norm(p, axis=-1) - s
    elif kind == "box":
        q = np.abs(p) - np.array([s, s * rng.uniform(0.5, 1.0), s * rng.uniform(0.3, 1.0)])
        d = np.linalg.norm(np.maximum(q, 0), axis=-1) + np.minimum(q.max(-1), 0)
    elif kind == "torus":
        r2 = s * 0.35
        d = np.linalg.norm(np.stack([np.linalg.norm(p[..., :2], axis=-1) - s, p[..., 2]], -1), axis=-1) - r2
    else:
        raise ValueError(kind)
    shell = np.abs(d) <= 0.75 / res
    return np.argwhere(shell).astype(np.uint8)


def _ply(points: np.ndarray) -> bytes:
    pts = np.ascontiguousarray(points, dtype="<f4")
    head = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(pts)}\nproperty float x\n"
            f"property float y\nproperty float z\nend_header\n").encode()
    return head + pts.tobytes()


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _silhouettes(coords: np.ndarray, colour: np.ndarray, n_views: int, size: int, rng) -> List[bytes]:
    from PIL import Image

    out = []
    pos = (coords.astype(np.float32) + 0.5) / 64 - 0.5
    for v in range(n_views):
        yaw = rng.uniform(0, 2 * np.pi)
        x = pos[:, 0] * np.cos(yaw) - pos[:, 1] * np.sin(yaw)
        u = np.clip(((x * 1.6 + 0.5) * size).astype(int), 0, size - 1)
        w = np.clip(((0.5 - pos[:, 2] * 1.6) * size).astype(int), 0, size - 1)
        img = np.zeros((size, size, 4), np.uint8)
        shade = (0.6 + 0.4 * (pos[:, 2] + 0.5))[:, None]
        img[w, u, :3] = np.clip(colour[None] * shade * 255, 0, 255).astype(np.uint8)
        img[w, u, 3] = 255
        buf = io.BytesIO()
        Image.fromarray(img, "RGBA").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def write_demo_dataset(store, catalog=None, n_assets: int = 12, seed: int = 0, n_views: int = 4,
                       image_size: int = 128, sources=("sample",), with_features: bool = False,
                       feat_dim: int = 1024, kinds=("sphere", "box", "torus"),
                       size_range: Optional[tuple] = None) -> List[Dict]:
    """Write ``n_assets`` shapes into ``store`` (and rows into ``catalog`` when given); returns the
    per-asset records (sha256, kind, num_voxels, source)."""
    from catalogs import layout
    from catalogs.catalog import utcnow

    rng = np.random.default_rng(seed)
    proj = np.random.default_rng(1234).normal(size=(8, 2)).astype(np.float32)
    slat_w = np.random.default_rng(4321).normal(size=(6, 8)).astype(np.float32)
    assets, artifacts, out = [], [], []
    for i in range(n_assets):
        kind = kinds[i % len(kinds)]
        sha = hashlib.sha256(f"demo-{seed}-{i}".encode()).hexdigest()
        size = rng.uniform(*size_range) if size_range else None
        coords = make_shape(kind, rng, size=size)
        coords = coords[rng.permutation(len(coords))]  # voxel order is not sorted (G11)
        n = len(coords)
        pos = (coords.astype(np.float32) + 0.5) / 64 - 0.5
        code = rng.normal(size=8).astype(np.float32) * 0.5
        basis = np.concatenate([np.sin(3 * pos), np.cos(3 * pos)], 1)
        feats = basis @ slat_w + code[None] + 0.05 * rng.normal(size=(n, 8)).astype(np.float32)
        occ = np.zeros((64, 64, 64), np.float32)
        occ[coords[:, 0], coords[:, 1], coords[:, 2]] = 1
        pooled = occ.reshape(16, 4, 16, 4, 16, 4).mean((1, 3, 5))
        ss = np.einsum("cf,fxyz->cxyz", proj, np.stack([pooled * 4 - 0.5, np.full_like(pooled, 0.1 * (i % 3))]))
        source = sources[i % len(sources)]
        files = {
            layout.voxels(sha): _ply(pos),
            layout.ss_latents(SS_MODEL, sha): _npz(mean=ss.astype(np.float32)),
            layout.latents(SLAT_MODEL, sha): _npz(feats=feats.astype(np.float32), coords=coords),
        }
        if with_features:
            pt = rng.normal(size=(n, feat_dim)).astype(np.float16)
            files[layout.features(FEAT_MODEL, sha)] = _npz(indices=coords, patchtokens=pt)
        colour = rng.uniform(0.2, 1.0, 3)
        pngs = _silhouettes(coords, colour, n_views, image_size, rng)
        for v, b in enumerate(pngs):
            files[f"{layout.renders_cond(sha)}/{v:03d}.png"] = b
        files[f"{layout.renders_cond(sha)}/transforms.json"] = json.dumps(
            {"aabb": [[-0.5] * 3, [0.5] * 3], "scale": 1.0, "offset": [0.0] * 3,
             "frames": [{"file_path": f"{v:03d}.png", "camera_angle_x": 0.7, "transform_matrix": np.eye(4).tolist()}
                        for v in range(n_views)]}, indent=4).encode()
        for rel, data in files.items():
            store.write_bytes(rel, data)
        caption = json.dumps([f"a {kind}", f"a small {kind} shape"])
        assets.append({"sha256": sha, "source": source, "file_identifier": f"demo/{kind}/{i}", "format": "npz",
                       "license": "CC0", "captions": caption, "aesthetic_score": 5.0 + (i % 3) * 0.5})
        now = utcnow()

        def art(stage, variant, uri, metrics=None):
            return {"sha256": sha, "stage": stage, "variant": variant, "fingerprint": f"demo-{stage}",
                    "status": "ok", "uri": store.uri(uri), "metrics": metrics or {}, "attempts": 1,
                    "run_id": "demo", "updated_at": now}

        artifacts += [art("voxelize", "", layout.voxels(sha), {"num_voxels": n}),
                      art("ss_latent", SS_MODEL, layout.ss_latents(SS_MODEL, sha)),
                      art("slat", SLAT_MODEL, layout.latents(SLAT_MODEL, sha)),
                      art("render_cond", "", layout.renders_cond(sha), {"n_views": n_views})]
        if with_features:
            artifacts.append(art("features", FEAT_MODEL, layout.features(FEAT_MODEL, sha)))
        out.append({"sha256": sha, "kind": kind, "num_voxels": n, "source": source})
    if catalog is not None:
        catalog.upsert_assets(assets)
        catalog.upsert_artifacts(artifacts)
    return out
