"""Fixtures of the encode tests: tiny seeded models (not pretrained) made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalogs.stage import StageContext
from catalogs.store import Store


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    from transformers.utils import logging as hf_logging

    from encode.models import make_demo_models, make_tiny_dinov2, make_tiny_slat_encoder

    hf_logging.disable_progress_bar()
    d = tmp_path_factory.mktemp("models")
    out = {k: str(v) for k, v in make_demo_models(d / "a", seed=0).items()}
    out["dinov2_seed1"] = str(make_tiny_dinov2(d / "b" / "dinov2_tiny", seed=1))
    out["slat_seed1"] = str(make_tiny_slat_encoder(d / "b" / "slat_enc_tiny_b", seed=1, name="slat_enc_tiny_b"))
    out["slat_seed1_same_name"] = str(make_tiny_slat_encoder(d / "c" / "slat_enc_tiny", seed=1))
    out["slat_in32"] = str(make_tiny_slat_encoder(d / "b" / "slat_enc_in32", seed=0, name="slat_enc_in32", in_channels=32))
    return out


@pytest.fixture
def ctx(tmp_path) -> StageContext:
    return StageContext(Store(str(tmp_path / "store")), "test")


def npz(ctx: StageContext, uri: str):
    import numpy as np

    return np.load(Path(ctx.store.path(ctx.store.rel(uri))))
