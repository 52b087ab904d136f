"""Fixtures for the training tests: a demo-like dataset (synthetic latents + cond renders + catalog rows)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared CI box
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from catalogs.catalog import Catalog
    from catalogs.store import Store
    from trellis_core.data import build_manifest
    from trellis_core.data.synthetic import SLAT_MODEL, SS_MODEL, write_demo_dataset

    d = tmp_path_factory.mktemp("demo")
    store, cat = Store(str(d / "store")), Catalog(str(d / "catalog.duckdb"))
    recs = write_demo_dataset(store, cat, n_assets=8, size_range=(0.05, 0.08), image_size=64,
                              sources=("sample", "other"))
    manifest = build_manifest(cat, "SELECT sha256 FROM metadata", store.url,
                              {"ss_latent": SS_MODEL, "slat": SLAT_MODEL, "render_cond": None})
    return {"dir": d, "store": store, "catalog": cat, "records": recs, "manifest": manifest}
