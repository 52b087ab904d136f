from pathlib import Path

import pytest

SPEC_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "spec").resolve()


@pytest.fixture(scope="session")
def spec_dir() -> Path:
    if not (SPEC_DIR / "MODELS.md").exists():
        pytest.skip(f"shared spec folder not found at {SPEC_DIR} (CI puts ../shared beside the clone)")
    return SPEC_DIR
