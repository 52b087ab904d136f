"""Re-encoding with another checkpoint: rewrite a pipeline spec (as a dict) to use a new model.

The build itself does the rest: the new weights hash changes the stage's fingerprint (and those
of its downstream stages), so exactly the rows made with other weights are stale and re-run;
upstream stages keep their fingerprints and are not touched. A new model name is a new variant:
its rows and files sit beside the old variant's, which stay as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

MODEL_STAGES = ("features", "ss_latent", "slat")


def _uses(entry: Mapping[str, Any]) -> str:
    return str(entry.get("use") or entry["name"])


def reencode_spec_dict(spec: Mapping[str, Any], stage: str, model: str, name: str | None = None) -> dict[str, Any]:
    """A copy of `spec` whose stage `stage` runs `model` (named `name`, else the model's own name).

    When a feature stage changes, every SLat stage fed by it gets the new feature variant as its
    `feature_model`, so its variant (`<feat_model>_<slat_model>`) follows.
    """
    out = copy.deepcopy(dict(spec))
    entries = out.get("stages") or []
    target = [e for e in entries if e.get("name") == stage]
    if not target:
        raise ValueError(f"the spec has no stage named {stage!r} (stages: {[e.get('name') for e in entries]})")
    entry = target[0]
    if _uses(entry) not in MODEL_STAGES:
        raise ValueError(f"stage {stage!r} runs no model (model stages: {', '.join(MODEL_STAGES)})")
    params = dict(entry.get("params") or {})
    params["model"] = model
    if name:
        params["name"] = name
    else:
        params.pop("name", None)
    entry["params"] = params
    if _uses(entry) == "features":
        from encode.features import FeatureStage

        feat_variant = FeatureStage(params).variant
        for e in entries:
            if _uses(e) == "slat" and stage in (e.get("upstream") or ["features"]):
                e["params"] = {**dict(e.get("params") or {}), "feature_model": feat_variant}
    return out
