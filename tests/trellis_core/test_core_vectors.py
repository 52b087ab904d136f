"""Every public reference vector: load weights and inputs, forward, compare within the json's tolerance."""
from pathlib import Path

import pytest

from trellis_core.spec_vectors import list_vectors, run_vector

SPEC_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "spec").resolve()

VECTORS = list_vectors(SPEC_DIR) if (SPEC_DIR / "vectors").exists() else []


def test_vectors_present(spec_dir):
    assert len(list_vectors(spec_dir)) >= 8


@pytest.mark.parametrize("name", VECTORS)
def test_vector(spec_dir, name):
    report = run_vector(spec_dir, name)
    bad = {k: v for k, v in report.items() if not v["ok"]}
    assert not bad, f"{name}: outputs out of tolerance: {bad}"
