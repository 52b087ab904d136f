"""SQL selection -> manifest -> samples; balanced sampler; mid-epoch resume; mixing; shards; preprocessing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from trellis_core.data import (BalancedBatchSampler, LatentNormalization, Manifest, SLatDataset, SSLatentDataset,
                               TRELLIS_SLAT_NORMALIZATION, balanced_split, build_manifest, collate_sparse,
                               crop_cond_image, split_balanced, write_shards)
from trellis_core.data.synthetic import SLAT_MODEL, SS_MODEL
from trellis_core.sparse import SparseTensor


def test_sql_to_manifest_to_samples(demo, tmp_path):
    cat, store = demo["catalog"], demo["store"]
    sel = "SELECT sha256 FROM metadata WHERE source = 'sample'"
    m = build_manifest(cat, sel, store.url, {"slat": SLAT_MODEL, "render_cond": None}, max_num_voxels=32768)
    want = sorted(r["sha256"] for r in demo["records"] if r["source"] == "sample")
    assert m.column("sha256") == want
    assert m.column("num_voxels") == [next(r["num_voxels"] for r in demo["records"] if r["sha256"] == s) for s in want]
    # frozen: same id after a round trip through Parquet and JSON, and in the store
    for name in ("m.parquet", "m.json"):
        m.save(str(tmp_path / name))
        assert Manifest.load(str(tmp_path / name)).id == m.id
    m.save("manifests/x.parquet", store=store)
    assert Manifest.load("manifests/x.parquet", store=store).id == m.id
    # a different selection gets a different id
    assert build_manifest(cat, "SELECT sha256 FROM metadata", store.url, {"slat": SLAT_MODEL, "render_cond": None}).id != m.id
    ds = SLatDataset(m, normalization="trellis", cond="image", image_size=64)
    s = ds[0]
    raw = np.load(store.path(m.records()[0]["slat"]))
    norm = LatentNormalization(**TRELLIS_SLAT_NORMALIZATION)
    np.testing.assert_allclose(s["feats"].numpy(), norm(raw["feats"]), rtol=1e-6)
    assert s["coords"].dtype == torch.int32 and s["coords"].shape == (len(raw["coords"]), 3)
    assert s["cond"].shape == (3, 64, 64) and 0 <= float(s["cond"].min()) and float(s["cond"].max()) <= 1
    b = collate_sparse([ds[0], ds[1]])
    x = b["x_0"]
    assert isinstance(x, SparseTensor) and x.batch_size == 2 and b["cond"].shape == (2, 3, 64, 64)
    assert x.coords[:, 0].tolist() == [0] * len(ds[0]["coords"]) + [1] * len(ds[1]["coords"])
    ss = SSLatentDataset(m if "ss_latent" in m.table.column_names else demo["manifest"], cond="text")[0]
    assert ss["x_0"].shape == (8, 16, 16, 16) and isinstance(ss["cond"], str)


def test_stats_json_normalization(demo):
    store = demo["store"]
    store.write_bytes(f"latents/{SLAT_MODEL}/stats.json", json.dumps({"mean": [1.0] * 8, "std": [2.0] * 8}).encode())
    n = LatentNormalization.from_stats(store, SLAT_MODEL)
    assert np.allclose(n(np.full((1, 8), 3.0, np.float32)), 1.0)
    assert np.allclose(n.inverse(np.ones((1, 8), np.float32)), 3.0)


def test_balanced_sampler_two_ranks():
    loads = [1000, 10, 900, 20, 800, 30, 700, 40]
    split = balanced_split(loads, 2, 4)
    sums = [sum(loads[i] for i in g) for g in split]
    assert sorted(len(g) for g in split) == [4, 4]
    assert abs(sums[0] - sums[1]) <= 100, sums      # naive halves would be 1930 vs 1570
    ranks = [BalancedBatchSampler(loads, 4, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    got = [list(s) for s in ranks]
    for b0, b1 in zip(*got):
        assert len(b0) == len(b1) == 4 and not set(b0) & set(b1)
        assert abs(sum(loads[i] for i in b0) - sum(loads[i] for i in b1)) <= 200
    assert sorted(sum(got[0] + got[1], [])) == list(range(8))


def test_resume_mid_epoch_same_remaining_order():
    loads = list(range(1, 41))
    a = BalancedBatchSampler(loads, 2, num_replicas=2, rank=1, seed=7)
    a.set_epoch(3)
    full = list(a)
    b = BalancedBatchSampler(loads, 2, num_replicas=2, rank=1, seed=7)
    b.set_epoch(3)
    it = iter(b)
    first = [next(it) for _ in range(4)]
    state = b.state_dict()
    assert state == {"epoch": 3, "position": 4, "seed": 7}
    c = BalancedBatchSampler(loads, 2, num_replicas=2, rank=1, seed=7)
    c.load_state_dict(json.loads(json.dumps(state)))
    assert first + list(c) == full
    d = BalancedBatchSampler(loads, 2, num_replicas=2, rank=1, seed=7)
    d.set_epoch(4)
    assert list(d) != full                          # another epoch, another order


def test_mixing_weights():
    groups = ["a"] * 10 + ["b"] * 90
    s = BalancedBatchSampler([1] * 100, 10, seed=0, groups=groups, weights={"a": 1.0, "b": 1.0}, num_samples=2000)
    idx = sum(list(s), [])
    frac_a = np.mean([groups[i] == "a" for i in idx])
    assert 0.45 < frac_a < 0.55                     # 50/50 although "a" is 10 % of the rows


def test_split_balanced_packs():
    batch = [{"coords": torch.zeros(n, 3, dtype=torch.int32), "feats": torch.zeros(n, 8)} for n in (50, 5, 40, 10)]
    packs = split_balanced(batch, 2)
    assert sorted(p["x_0"].feats.shape[0] for p in packs) == [50, 55]


def test_packed_shards_match_files(demo, tmp_path):
    from catalogs.store import Store
    m = demo["manifest"]
    out = Store(str(tmp_path / "shards"))
    sm = write_shards(m, out, "slat_shards", kind="slat", rows_per_shard=3)
    assert len([p for p in out.walk_files("slat_shards") if p.endswith(".arrow")]) == 3
    a, b = SLatDataset(m), SLatDataset(sm)
    for i in range(len(m)):
        assert torch.equal(a[i]["coords"], b[i]["coords"]) and torch.equal(a[i]["feats"], b[i]["feats"])
    ssm = write_shards(m, out, "ss_shards", kind="ss_latent", rows_per_shard=4)
    assert torch.equal(SSLatentDataset(ssm)[2]["x_0"], SSLatentDataset(m)[2]["x_0"])
    # the shards also read through fsspec (a remote-like store)
    mem = Store("memory://shards-test")
    rm = write_shards(m, mem, "p", kind="slat", rows_per_shard=4)
    assert torch.equal(SLatDataset(rm)[5]["feats"], a[5]["feats"])


def test_cond_crop_reference_rule():
    img = np.zeros((100, 200, 4), np.uint8)
    img[20:40, 50:90] = [255, 128, 0, 255]          # 40 wide x 20 high box
    t = crop_cond_image(Image.fromarray(img, "RGBA"), size=518)
    assert t.shape == (3, 518, 518)
    # the box spans 1/1.2 of the crop width: centre column lit, corners black (premultiplied)
    assert t[0, 259, 259] > 0.9 and t[:, 5, 5].abs().max() < 1e-6
    lit = (t[0, 259] > 0.5).float().sum().item() / 518
    assert abs(lit - 40 / (2 * 19.5 * 1.2)) < 0.02  # inclusive bbox: 40 px over 2 x 1.2 x (x1 - x0) / 2
    with pytest.raises(ValueError):
        crop_cond_image(Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA"))
