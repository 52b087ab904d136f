"""Fixtures of the encode tests: tiny seeded models (not pretrained) made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalogs.stage import StageContext
from catalogs.store import Store


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    from transformers.utils import logging as hf_logging

    from trellis_core.models.tiny import save_tiny

    hf_logging.disable_progress_bar()
    d = tmp_path_factory.mktemp("models")
    out = {kind: str(save_tiny(kind, d / "a" / kind)) for kind in ("dinov2", "ss_enc", "slat_enc")}
    out["dinov2_seed1"] = str(save_tiny("dinov2", d / "b" / "dinov2_tiny", seed=1))
    out["slat_seed1"] = str(save_tiny("slat_enc", d / "b" / "slat_enc_tiny_b", seed=1, name="slat_enc_tiny_b"))
    out["slat_seed1_same_name"] = str(save_tiny("slat_enc", d / "c" / "slat_enc_tiny", seed=1))
    out["slat_in32"] = str(save_tiny("slat_enc", d / "b" / "slat_enc_in32", name="slat_enc_in32", in_channels=32))
    return out


@pytest.fixture
def ctx(tmp_path) -> StageContext:
    return StageContext(Store(str(tmp_path / "store")), "test")


def npz(ctx: StageContext, uri: str):
    import numpy as np

    return np.load(Path(ctx.store.path(ctx.store.rel(uri))))
