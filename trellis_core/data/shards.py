"""Packed latent shards: a few large Arrow IPC files instead of one npz per asset (object stores).

Layout under a store prefix ``<prefix>/``: ``shard-00000.arrow`` ... and ``index.parquet``
(``sha256, shard, row``). A shard row holds ``sha256``, ``n`` and the raw little-endian bytes of
``coords`` (uint8 (n, 3)) and ``feats`` (float32 (n, C)) for SLat, or ``mean`` (float32 (8, 16, 16, 16))
for SS latents. Local shards are memory-mapped (zero copy); remote ones are fetched whole once
and kept in a small LRU cache.
"""
from __future__ import annotations

import io
import posixpath
from collections import OrderedDict
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
import pyarrow as pa

__all__ = ["write_shards", "ShardReader", "SHARD_INDEX"]

SHARD_INDEX = "index.parquet"
_SLAT_SCHEMA = pa.schema([("sha256", pa.string()), ("n", pa.int32()), ("coords", pa.binary()), ("feats", pa.binary())])
_SS_SCHEMA = pa.schema([("sha256", pa.string()), ("mean", pa.binary())])


def _ipc_bytes(rows, schema) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, schema) as w:
        w.write_table(pa.Table.from_pylist(rows, schema=schema))
    return sink.getvalue()


def write_shards(manifest, store, prefix: str, kind: str = "slat", rows_per_shard: int = 4096, source_store=None):
    """Pack the ``kind`` files (``slat`` or ``ss_latent``) of ``manifest`` into ``store/<prefix>``.

    Returns the manifest with ``shards`` (the prefix URI), ``shard`` and ``shard_row`` columns, so a
    dataset built on it reads the shards instead of the per-asset files."""
    from catalogs.store import Store

    stores: Dict[str, Store] = {}
    col = "slat" if kind == "slat" else "ss_latent"
    schema = _SLAT_SCHEMA if kind == "slat" else _SS_SCHEMA
    shard_of, row_of, rows, shard = [], [], [], 0
    recs = manifest.records()
    for i, r in enumerate(recs):
        st = source_store or stores.setdefault(r["root"], Store(r["root"]))
        with np.load(io.BytesIO(st.read_bytes(r[col]))) as z:
            if kind == "slat":
                c = np.ascontiguousarray(z["coords"], dtype=np.uint8)
                f = np.ascontiguousarray(z["feats"], dtype=np.float32)
                rows.append({"sha256": r["sha256"], "n": len(c), "coords": c.tobytes(), "feats": f.tobytes()})
            else:
                rows.append({"sha256": r["sha256"], "mean": np.ascontiguousarray(z["mean"], np.float32).tobytes()})
        shard_of.append(shard)
        row_of.append(len(rows) - 1)
        if len(rows) == rows_per_shard or i == len(recs) - 1:
            store.write_bytes(posixpath.join(prefix, f"shard-{shard:05d}.arrow"), _ipc_bytes(rows, schema))
            rows, shard = [], shard + 1
    idx = pa.table({"sha256": manifest.column("sha256"), "shard": shard_of, "row": row_of})
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(idx, buf)
    store.write_bytes(posixpath.join(prefix, SHARD_INDEX), buf.getvalue())
    m = manifest.with_columns(shards=[store.uri(prefix)] * len(manifest), shard=shard_of, shard_row=row_of)
    m.params = {**manifest.params, "shards": {"uri": store.uri(prefix), "kind": kind}}
    return m


class ShardReader:
    """Row access to packed shards; memory-maps local files, caches up to ``cache`` remote shards."""

    def __init__(self, uri: str, cache: int = 4):
        import fsspec

        self.fs, self.root = fsspec.core.url_to_fs(uri)
        self.local = "file" in tuple(self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.cache: "OrderedDict[int, pa.Table]" = OrderedDict()
        self.max_cache = cache

    def _table(self, shard: int) -> pa.Table:
        t = self.cache.get(shard)
        if t is not None:
            self.cache.move_to_end(shard)
            return t
        path = posixpath.join(self.root, f"shard-{shard:05d}.arrow")
        if self.local:
            t = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()
        else:
            t = pa.ipc.open_file(pa.py_buffer(self.fs.cat_file(path))).read_all()
        # column chunks as flat python-free buffers for fast row slicing
        t = t.combine_chunks()
        self.cache[shard] = t
        if len(self.cache) > self.max_cache:
            self.cache.popitem(last=False)
        return t

    @staticmethod
    def _bin(col: pa.Array, row: int) -> memoryview:
        offs = np.frombuffer(col.buffers()[1], dtype=np.int32, count=len(col) + 1, offset=col.offset * 4)
        data = col.buffers()[2]
        return memoryview(data)[offs[row]:offs[row + 1]]

    def slat(self, shard: int, row: int) -> Tuple[np.ndarray, np.ndarray]:
        t = self._table(shard)
        c = np.frombuffer(self._bin(t.column("coords").chunk(0), row), dtype=np.uint8).reshape(-1, 3)
        f = np.frombuffer(self._bin(t.column("feats").chunk(0), row), dtype=np.float32).reshape(c.shape[0], -1)
        return c, f

    def ss(self, shard: int, row: int) -> np.ndarray:
        t = self._table(shard)
        a = np.frombuffer(self._bin(t.column("mean").chunk(0), row), dtype=np.float32)
        r = round((a.size // 8) ** (1 / 3))
        return a.reshape(8, r, r, r)
