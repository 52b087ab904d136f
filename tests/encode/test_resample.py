"""The device-side resize equals Pillow's RGBA LANCZOS bit for bit, so features do not change."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from encode.features import FeatureStage
from encode.resample import resize_rgba
from tests.encode import synth
from tests.encode.conftest import npz


@pytest.mark.parametrize("shape", [(512, 512), (64, 64), (700, 700), (300, 200)])
def test_resize_rgba_is_bit_exact_with_pillow(shape):
    rng = np.random.default_rng(shape[0])
    img = rng.integers(0, 256, (*shape, 4), dtype=np.uint8)
    img[..., 3] = np.where(rng.random(shape) < 0.4, 0, rng.integers(0, 256, shape))  # transparent and partial alpha
    img[:20, :, 3] = 255
    ref = np.asarray(Image.fromarray(img, "RGBA").resize((518, 518), Image.Resampling.LANCZOS))
    got = resize_rgba(torch.from_numpy(img[None]), 518)[0].numpy()
    np.testing.assert_array_equal(got, ref)


def test_stage_output_is_identical_with_device_resize(models, ctx):
    tasks = [synth.write_asset(ctx.store, synth.sha(i), n_views=3, seed=i) for i in range(2)]
    outs = []
    for on_device in (False, True):
        st = FeatureStage({"model": models["dinov2"], "precision": "fp32"}, {"resize_on_device": on_device})
        outs.append([npz(ctx, r.uri)["patchtokens"] for r in st.run_batch(tasks, ctx)])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
