"""Shared part of the model stages (features, ss_latent, slat): model location vs. identity.

The `model` param says where the weights are; it is left out of the fingerprint, which gets the
weights' sha256 through `weights_hash()` instead (so moving a checkpoint to another folder, or
reading it from the Hub cache on another node, changes nothing, while swapping it re-encodes).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from catalogs.stage import Stage
from encode.models import ModelRef, default_name, resolve, safe_name

log = logging.getLogger("trellis_data.encode")

LOCATION_PARAMS = ("model",)
"""Params that say where a model is, not what it is: never fingerprinted."""


class ModelStage(Stage):
    model_family: ClassVar[str] = "trellis"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._ref: ModelRef | None = None
        self._name: str | None = None

    # identity --------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        if self._name is None:
            explicit = getattr(self.params, "name", None)
            self._name = safe_name(explicit) if explicit else default_name(self.params.model, self.model_family)
        return self._name

    @property
    def variant(self) -> str:
        return self.model_name

    @property
    def model_ref(self) -> ModelRef:
        if self._ref is None:
            self._ref = resolve(self.params.model, self.model_family, self.model_name)
        return self._ref

    def params_dict(self) -> dict[str, Any]:
        d = super().params_dict()
        for k in LOCATION_PARAMS:
            d.pop(k, None)
        return d

    def weights_hash(self) -> str | None:
        return self.model_ref.weights_sha256()

    def model_info(self) -> dict[str, Any]:
        return self.model_ref.info()

    # run-time settings -------------------------------------------------------------------------
    @property
    def device(self):
        import torch

        want = str(self.config.get("device", "auto"))
        if want == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(want)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("model", "_loader", "_writer"):
            if k in state:
                state[k] = None  # models and thread pools never travel with the stage
        return state
