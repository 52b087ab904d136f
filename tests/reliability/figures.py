"""Fault and bad-input figures: tests emit them when TRELLIS_RELIABILITY_FIGURES names a folder
(`python -m bench.reliability_figures` sets it and collects them into bench/results/)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def emit(name: str, figures: dict[str, Any]) -> None:
    folder = os.environ.get("TRELLIS_RELIABILITY_FIGURES")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(figures, indent=1, default=str))
