"""Shared fixtures: one real local Ray cluster per test session (on loopback), temp roots."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray cluster (2 CPUs, node IP 127.0.0.2 so nothing leaves loopback)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, _node_ip_address="127.0.0.2")
    yield ray
    ray.shutdown()


@pytest.fixture
def root(tmp_path) -> Path:
    d = tmp_path / "store"
    d.mkdir()
    return d
