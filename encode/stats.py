"""Latent statistics (DATA_FORMATS §8, G21): per-channel mean/std of SLat latents over a selection.

Asset-weighted as the reference: per asset the channel mean m_a and mean of squares q_a over its
voxels; mean = avg_a m_a, std = sqrt(avg_a q_a - mean^2). Written as `latents/<model>/stats.json`
(`{"mean": [...], "std": [...]}`, indent 4) and recorded in the catalog's `latent_stats` table with
the selection, the sample and a hash of the (sha256, fingerprint) pairs used.

Unlike the reference's unseeded draw (G5) the sample of at most `sample` assets is seeded, so a
statistics row can be reproduced. Assets that fail to load are skipped and counted.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import asdict, dataclass

import numpy as np

from catalogs import layout
from catalogs.catalog import SLAT_STAGE, Catalog
from catalogs.planner import selection_sql
from catalogs.store import Store


@dataclass
class LatentStats:
    stats_id: str
    stage: str
    variant: str
    selection: str | None
    n_selected: int
    n_used: int
    n_failed: int
    sample_size: int
    seed: int
    inputs_sha256: str
    mean: list[float]
    std: list[float]
    uri: str


def asset_moments(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, mean of squares) per channel over one asset's voxels, in float64."""
    f = np.asarray(feats, dtype=np.float64)
    return f.mean(0), (f * f).mean(0)


def combine(moments: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Asset-weighted mean and std from per-asset moments."""
    m = np.mean([a for a, _ in moments], axis=0)
    q = np.mean([b for _, b in moments], axis=0)
    return m, np.sqrt(np.maximum(q - m * m, 0.0))


def latent_stats(catalog: Catalog, store: Store, variant: str, selection: str | None = None, sample: int = 50_000,
                 seed: int = 0, stage: str = SLAT_STAGE, record: bool = True) -> LatentStats:
    """Compute, write and (unless `record` is False) record the statistics of one latent variant."""
    with catalog.connect() as con:
        rows = con.execute(
            f"SELECT sha256, uri, fingerprint FROM artifacts WHERE stage = ? AND variant = ? AND status = 'ok' "
            f"AND sha256 IN (SELECT sha256 FROM ({selection_sql(selection)})) ORDER BY sha256", [stage, variant]
        ).fetchall()
    if not rows:
        raise ValueError(f"no current {stage} latents of variant {variant!r} in the selection")
    n_selected = len(rows)
    if len(rows) > sample:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=sample, replace=False))
        rows = [rows[i] for i in pick]
    moments, used, failed = [], [], 0
    for sha, uri, fp in rows:
        try:
            with np.load(io.BytesIO(store.read_bytes(store.rel(uri))), allow_pickle=False) as z:
                feats = z["feats"]
            if feats.ndim != 2 or not len(feats):
                raise ValueError("empty latent")
            moments.append(asset_moments(feats))
            used.append(f"{sha}:{fp}")
        except Exception:
            failed += 1
    if not moments:
        raise ValueError(f"none of the {len(rows)} sampled latents could be read")
    mean, std = combine(moments)
    rel = layout.latent_stats(variant)
    store.write_bytes(rel, json.dumps({"mean": mean.tolist(), "std": std.tolist()}, indent=4).encode())
    result = LatentStats(
        stats_id=uuid.uuid4().hex[:16], stage=stage, variant=variant, selection=selection, n_selected=n_selected,
        n_used=len(moments), n_failed=failed, sample_size=min(sample, n_selected), seed=seed,
        inputs_sha256=hashlib.sha256("\n".join(used).encode()).hexdigest(), mean=mean.tolist(), std=std.tolist(),
        uri=store.uri(rel))
    if record:
        d = asdict(result)
        d["mean"], d["std"] = json.dumps(d["mean"]), json.dumps(d["std"])
        cols = list(d)
        with catalog.connect() as con:
            con.execute(f"INSERT INTO latent_stats ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        [d[c] for c in cols])
    return result
