"""Exports: TRELLIS's metadata.csv + statistics.txt (DATA_FORMATS §1), and Parquet snapshots.

metadata.csv is written so that TRELLIS's own `pd.read_csv` readers get the dtypes they filter on:
sha256 first, booleans only True/False, num_voxels integer, captions a JSON array or empty.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from catalogs import layout
from catalogs.catalog import Catalog
from catalogs.store import Store

SNAPSHOT_TABLES = ("assets", "artifacts", "runs", "models", "subsets", "subset_members", "asset_relations", "estimates")
LEADING = ["sha256", "file_identifier", "aesthetic_score", "captions"]
STATUS = ["rendered", "voxelized", "num_voxels", "cond_rendered", "local_path"]
FAMILIES = ("feature_", "latent_", "ss_latent_")
"""Model column families in the reference's order: features, latents, ss_latents."""


def _family(column: str) -> int | None:
    if column.startswith("ss_latent_"):
        return 2
    for i, prefix in enumerate(FAMILIES[:2]):
        if column.startswith(prefix):
            return i
    return None


def metadata_frame(catalog: Catalog, selection: str | None = None) -> pd.DataFrame:
    """One row per asset in TRELLIS's metadata.csv column order."""
    where = f"WHERE sha256 IN ({selection})" if selection else ""
    df = catalog.query(f"SELECT * FROM metadata {where} ORDER BY sha256").to_pandas()
    model_cols = sorted((c for c in df.columns if _family(c) is not None), key=lambda c: (_family(c), c))
    passthrough = [c for c in ("source", "license") if c in df.columns]
    df = df[LEADING + passthrough + STATUS + model_cols]
    for c in ["rendered", "voxelized", "cond_rendered", *model_cols]:
        df[c] = df[c].fillna(False).astype(bool)
    df["num_voxels"] = df["num_voxels"].fillna(0).astype("int64")
    df["aesthetic_score"] = df["aesthetic_score"].astype("float64")
    return df


def statistics_text(df: pd.DataFrame) -> str:
    lines = ["Statistics:", f"  - Number of assets: {len(df)}",
             f"  - Number of assets downloaded: {int(df['local_path'].notna().sum())}",
             f"  - Number of assets rendered: {int(df['rendered'].sum())}",
             f"  - Number of assets voxelized: {int(df['voxelized'].sum())}"]
    for family, heading in enumerate(("image features extracted", "latents extracted", "sparse structure latents extracted")):
        cols = [c for c in df.columns if _family(c) == family]
        if cols:
            lines.append(f"  - Number of assets with {heading}:")
            lines += [f"    - {c[len(FAMILIES[family]):]}: {int(df[c].sum())}" for c in cols]
    lines.append(f"  - Number of assets with captions: {int(df['captions'].notna().sum())}")
    lines.append(f"  - Number of assets with image conditions: {int(df['cond_rendered'].sum())}")
    return "\n".join(lines) + "\n"


def snapshot(catalog: Catalog, store: Store) -> list[str]:
    """Parquet copies of every catalog table under `catalog/snapshot/` in the store."""
    written = []
    for table in SNAPSHOT_TABLES:
        t: pa.Table = catalog.query(f"SELECT * FROM {table}")
        buf = pa.BufferOutputStream()
        pq.write_table(t, buf)
        rel = f"{layout.CATALOG_DIR}/snapshot/{table}.parquet"
        store.write_bytes(rel, buf.getvalue().to_pybytes())
        written.append(store.uri(rel))
    return written


def export(catalog: Catalog, store: Store, out: Store | None = None, selection: str | None = None) -> list[str]:
    """Write metadata.csv and statistics.txt (to `out`, default the store root) and snapshots."""
    out = out or store
    df = metadata_frame(catalog, selection)
    csv = io.StringIO()
    df.to_csv(csv, index=False)
    out.write_bytes("metadata.csv", csv.getvalue().encode())
    out.write_bytes("statistics.txt", statistics_text(df).encode())
    return [out.uri("metadata.csv"), out.uri("statistics.txt"), *snapshot(catalog, store)]
