"""Training datasets over a :class:`Manifest` (DATA_FORMATS §9.2).

* :class:`SSLatentDataset` -> ``x_0`` float32 (8, 16, 16, 16) (not normalised, as the SS configs).
* :class:`SLatDataset` -> ``coords`` int32 (N, 3), ``feats`` float32 (N, 8), normalised per channel.
* ``cond="image"`` adds ``cond`` (3, 518, 518): a random view of ``renders_cond/<sha>``, cropped as
  the reference reader does; ``cond="text"`` adds ``cond``: one caption drawn uniformly.
* :class:`OccupancyDataset` (SS VAE) -> ``ss`` float32 (1, R, R, R) from ``voxels/<sha>.ply``.
* :class:`SparseFeatDataset` (SLat VAE) -> ``coords`` (N, 3), ``feats`` float16->float32 (N, 1024).

Random choices (cond view, caption, replacement of a bad sample) come from a generator seeded by
``(seed, epoch, index)``, so a run is reproducible and independent of the worker layout. A sample
that fails to load is replaced by another (as the reference does), but the failure is counted in
``self.failures`` and logged, never silent.
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .manifest import Manifest

__all__ = ["LatentNormalization", "SSLatentDataset", "SLatDataset", "OccupancyDataset", "SparseFeatDataset",
           "TRELLIS_SLAT_NORMALIZATION"]

log = logging.getLogger(__name__)

TRELLIS_SLAT_NORMALIZATION = {
    "mean": [-2.1687545776367188, -0.004347046371549368, -0.13352349400520325, -0.08418072760105133,
             -0.5271206498146057, 0.7238689064979553, -1.1414450407028198, 1.2039363384246826],
    "std": [2.377650737762451, 2.386378288269043, 2.124418020248413, 2.1748552322387695,
            2.663944721221924, 2.371192216873169, 2.6217446327209473, 2.684523105621338],
}


class LatentNormalization:
    """Per-channel ``(x - mean) / std`` and its inverse."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def from_stats(cls, store, model: str) -> "LatentNormalization":
        """``latents/<model>/stats.json`` of a store (DATA_FORMATS §8)."""
        from catalogs import layout
        d = json.loads(store.read_bytes(layout.latent_stats(model)))
        return cls(d["mean"], d["std"])

    @classmethod
    def resolve(cls, spec) -> Optional["LatentNormalization"]:
        if spec is None or isinstance(spec, cls):
            return spec
        if spec == "trellis":
            return cls(**TRELLIS_SLAT_NORMALIZATION)
        return cls(spec["mean"], spec["std"])

    def to_dict(self) -> Dict[str, List[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def __call__(self, feats):
        """Normalised copy (numpy in, numpy out; a torch tensor is normalised in torch)."""
        if isinstance(feats, torch.Tensor):
            return (feats - torch.as_tensor(self.mean, device=feats.device)) / torch.as_tensor(self.std, device=feats.device)
        return (torch.from_numpy(np.asarray(feats, np.float32)) - torch.from_numpy(self.mean)).div_(
            torch.from_numpy(self.std)).numpy()

    def inverse(self, feats):
        if isinstance(feats, torch.Tensor):
            return feats * torch.as_tensor(self.std, device=feats.device) + torch.as_tensor(self.mean, device=feats.device)
        return feats * self.std + self.mean


class _ManifestDataset(Dataset):
    max_retries = 16

    def __init__(self, manifest: Manifest, cond: Optional[str] = None, image_size: int = 518, seed: int = 0,
                 storage_options: Optional[Mapping[str, Any]] = None):
        if cond not in (None, "image", "text"):
            raise ValueError(f"cond must be None, 'image' or 'text', not {cond!r}")
        self.manifest, self.cond, self.image_size, self.seed = manifest, cond, image_size, seed
        self.rows = manifest.records()
        self.storage_options = dict(storage_options or {})
        self.epoch, self.failures = 0, 0
        self._stores: Dict[str, Any] = {}
        self._shards: Dict[str, Any] = {}
        self._frames: Dict[str, List[str]] = {}
        if cond == "image" and "cond" not in manifest.table.column_names:
            raise ValueError("cond='image' needs a manifest built with the render_cond stage")
        if cond == "text":
            bad = [r["sha256"] for r in self.rows if not _captions(r.get("captions"))]
            if bad:
                raise ValueError(f"{len(bad)} assets have no captions (e.g. {bad[0]}); select captioned assets")

    @property
    def loads(self) -> List[int]:
        return self.manifest.loads

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_stores"], d["_shards"] = {}, {}  # file handles / mmaps are reopened in each worker
        return d

    def store(self, root: str):
        st = self._stores.get(root)
        if st is None:
            from catalogs.store import Store
            st = self._stores[root] = Store(root, **self.storage_options)
        return st

    def shard_reader(self, uri: str):
        r = self._shards.get(uri)
        if r is None:
            from .shards import ShardReader
            r = self._shards[uri] = ShardReader(uri)
        return r

    def read_npz(self, row: Mapping[str, Any], col: str) -> Dict[str, np.ndarray]:
        st = self.store(row["root"])
        if st.local:
            with np.load(st.path(row[col])) as z:
                return {k: z[k] for k in z.files}
        with np.load(io.BytesIO(st.read_bytes(row[col]))) as z:
            return {k: z[k] for k in z.files}

    def rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, attempt])

    # ------------------------------------------------------------------ conditions
    def cond_image(self, row, rng) -> torch.Tensor:
        from PIL import Image
        from .image import crop_cond_image

        st, d = self.store(row["root"]), row["cond"]
        frames = self._frames.get(row["sha256"])
        if frames is None:
            tf = json.loads(st.read_bytes(posixpath.join(d, "transforms.json")))
            frames = self._frames[row["sha256"]] = [f["file_path"] for f in tf["frames"]]
        name = frames[int(rng.integers(len(frames)))]
        img = Image.open(io.BytesIO(st.read_bytes(posixpath.join(d, name))))
        return crop_cond_image(img, self.image_size)

    def add_cond(self, sample: Dict[str, Any], row, rng) -> Dict[str, Any]:
        if self.cond == "image":
            sample["cond"] = self.cond_image(row, rng)
        elif self.cond == "text":
            caps = _captions(row.get("captions"))
            sample["cond"] = caps[int(rng.integers(len(caps)))]
        return sample

    # ------------------------------------------------------------------ access
    def load(self, index: int, rng) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int) -> Dict[str, Any]:
        idx = int(index)
        for attempt in range(self.max_retries):
            rng = _LazyRng(self, int(index), attempt)
            try:
                sample = self.load(idx, rng)
                sample["index"] = int(index)
                return sample
            except Exception as e:  # bad data is skipped, as the reference does, but counted and logged
                self.failures += 1
                log.warning("sample %s (%s) failed: %s: %s; drawing another", idx, self.rows[idx]["sha256"],
                            type(e).__name__, e)
                idx = int(rng.integers(len(self.rows)))
        raise RuntimeError(f"{self.max_retries} consecutive samples failed to load (last index {idx})")


class _LazyRng:
    """The per-(seed, epoch, index, attempt) generator, created only when a draw is needed."""

    __slots__ = ("ds", "key", "_g")

    def __init__(self, ds, index, attempt):
        self.ds, self.key, self._g = ds, (index, attempt), None

    def integers(self, *a, **k):
        if self._g is None:
            self._g = self.ds.rng(*self.key)
        return self._g.integers(*a, **k)


def _captions(value) -> List[str]:
    if not value:
        return []
    if isinstance(value, list):
        return [c for c in value if c]
    try:
        v = json.loads(value)
    except (TypeError, ValueError):
        return [value]
    return [c for c in v if c] if isinstance(v, list) else [str(v)]


class SSLatentDataset(_ManifestDataset):
    """``ss_latents`` npz -> ``x_0`` (8, 16, 16, 16) float32 (raw mean, no normalisation)."""

    def load(self, index, rng):
        row = self.rows[index]
        if row.get("shard") is not None and row.get("shards"):
            x = self.shard_reader(row["shards"]).ss(int(row["shard"]), int(row["shard_row"]))
        else:
            x = self.read_npz(row, "ss_latent")["mean"]
        return self.add_cond({"x_0": torch.from_numpy(np.array(x, dtype=np.float32))}, row, rng)


class SLatDataset(_ManifestDataset):
    """``latents`` npz -> ``coords`` int32 (N, 3), ``feats`` float32 (N, 8) (normalised when configured)."""

    def __init__(self, manifest: Manifest, normalization=None, **kw):
        super().__init__(manifest, **kw)
        self.normalization = LatentNormalization.resolve(normalization)

    def load(self, index, rng):
        row = self.rows[index]
        if row.get("shard") is not None and row.get("shards"):
            c, f = self.shard_reader(row["shards"]).slat(int(row["shard"]), int(row["shard_row"]))
        else:
            z = self.read_npz(row, "slat")
            c, f = z["coords"], z["feats"]
        f = np.asarray(f, dtype=np.float32)
        if self.normalization is not None:
            f = np.subtract(f, self.normalization.mean)     # new array (inputs may be read-only shard views)
            f /= self.normalization.std
        elif not f.flags.writeable:
            f = f.copy()
        f = torch.from_numpy(f)
        sample = {"coords": torch.from_numpy(c.astype(np.int32)), "feats": f}
        return self.add_cond(sample, row, rng)


class SparseFeatDataset(_ManifestDataset):
    """``features`` npz (DINOv2 per voxel) -> ``coords`` int32 (N, 3), ``feats`` float32 (N, 1024)."""

    def load(self, index, rng):
        z = self.read_npz(self.rows[index], "features")
        return {"coords": torch.from_numpy(z["indices"].astype(np.int32)),
                "feats": torch.from_numpy(z["patchtokens"].astype(np.float32))}


def read_voxel_ply(data: bytes) -> np.ndarray:
    """(N, 3) float32 voxel centres of a vertices-only binary PLY (DATA_FORMATS §4)."""
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError("not a binary PLY file")
    n = next(int(l.split()[2]) for l in data[:end].decode("ascii").splitlines() if l.startswith("element vertex"))
    return np.frombuffer(data[end + 11:end + 11 + 12 * n], dtype="<f4").reshape(n, 3)


class OccupancyDataset(_ManifestDataset):
    """``voxels/<sha>.ply`` -> ``ss`` float32 (1, R, R, R), 1 at occupied cells (SS VAE input)."""

    def __init__(self, manifest: Manifest, resolution: int = 64, **kw):
        super().__init__(manifest, **kw)
        self.resolution = resolution

    def load(self, index, rng):
        from catalogs import layout
        row = self.rows[index]
        pts = read_voxel_ply(self.store(row["root"]).read_bytes(layout.voxels(row["sha256"])))
        idx = np.clip(np.floor((pts + 0.5) * self.resolution).astype(np.int64), 0, self.resolution - 1)
        ss = torch.zeros(1, self.resolution, self.resolution, self.resolution)
        ss[0, idx[:, 0], idx[:, 1], idx[:, 2]] = 1
        return {"ss": ss}
