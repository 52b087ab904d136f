"""Model stages (features, ss_latent, slat, aesthetic): one convention for models in fingerprints.

Params (in the fingerprint unless they say where files are):
- location params (`model`; the aesthetic stage also has `head`) say *where* the weights are: a
  local path, a Hub reference `owner/repo[@revision][/path]` or `tiny:<kind>[:<seed>]`. They never
  enter the fingerprint; the weights' hash does, so moving a checkpoint to another folder changes
  nothing and swapping it re-encodes.
- `name`: the model's name and the stage's variant (default: the model's own name).
- `precision`: the arithmetic the stage computes in. Each stage lists its choices and there is no
  `auto`: one fingerprint is one set of numbers on every device (a CPU worker computes fp16 in fp16).
Config (run-time, never fingerprinted): `device` (`auto`: CUDA where present), batch sizes, threads.

The planner resolves each location once (fetching Hub files and pinning the commit they came from)
and hashes the weights; `pins()` hands commit and hash to the workers in their stage config
(`model_pins`). A worker fetches exactly that commit and checks, before loading, that the files it
loads hash to the planned hash: on a mismatch every asset of its batch fails with `WeightsMismatch`
rather than writing numbers under a fingerprint that does not describe them.

How a location becomes files is the model family's business (`trellis_core.locations.FAMILIES`):
a subclass maps each location param to a family object with `resolve()` and `default_name()`, so
this contract imports nothing above `catalogs`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from catalogs.layout import check_name
from catalogs.stage import ModelConfigMismatch, Stage, StageError, WeightsMismatch

log = logging.getLogger("trellis_data.models")

PINS_KEY = "model_pins"
"""Stage-config key under which the planner's pins reach the workers."""


class ModelFamily(Protocol):
    """How locations of one on-disk form resolve (implemented by `trellis_core.locations.Family`)."""

    def resolve(self, location: str, name: str | None = None, revision: str | None = None) -> Any: ...

    def default_name(self, location: str) -> str: ...


class ModelStage(Stage):
    """Base of every stage that runs a model. Subclasses declare `models` and `precisions`, and their
    Params have `model`, `name` and `precision` (plus any further location param named in `models`)."""

    models: ClassVar[Mapping[str, ModelFamily]] = {}
    """Location param -> its model family; the first one names the variant."""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.params.precision not in self.precisions:
            raise ValueError(f"stage {self.name}: precision must be one of {list(self.precisions)}, "
                             f"got {self.params.precision!r}")
        self._refs: dict[str, Any] = {}
        self._weights: str | None = None
        self.model: Any = None
        self._setup_error: StageError | None = None

    # identity ------------------------------------------------------------------------------------
    @property
    def main_param(self) -> str:
        return next(iter(self.models))

    @property
    def model_name(self) -> str:
        explicit = self.params.name
        if explicit:
            return check_name(explicit)
        return self.models[self.main_param].default_name(getattr(self.params, self.main_param))

    @property
    def variant(self) -> str:
        return self.model_name

    def model_ref(self, param: str | None = None) -> Any:
        """The resolved model of location param `param` (default: the main one), at the pinned revision."""
        param = param or self.main_param
        if param not in self._refs:
            pin = self._pins().get(param, {})
            name = self.model_name if param == self.main_param else None
            self._refs[param] = self.models[param].resolve(getattr(self.params, param), name, pin.get("revision"))
        return self._refs[param]

    def params_dict(self) -> dict[str, Any]:
        d = super().params_dict()
        for k in self.models:
            d.pop(k, None)
        return d

    def _pins(self) -> Mapping[str, Mapping[str, Any]]:
        return self.config.get(PINS_KEY) or {}

    def weights_hash(self) -> str:
        """sha256 of the weights (several models: of their hashes by param); the planner's pin if given."""
        if self._weights is None:
            pins = self._pins()
            if pins and all("weights_sha256" in pins.get(p, {}) for p in self.models):
                self._weights = _combine({p: pins[p]["weights_sha256"] for p in self.models})
            else:
                self._weights = _combine({p: self.model_ref(p).weights_sha256() for p in self.models})
        return self._weights

    def pins(self) -> dict[str, Any]:
        """What workers must use: per location param the pinned revision and the weights hash."""
        return {PINS_KEY: {p: {"revision": self.model_ref(p).revision, "weights_sha256": self.model_ref(p).weights_sha256()}
                           for p in self.models}}

    def check_weights(self) -> None:
        """Raise `WeightsMismatch` if the files this worker is about to load are not the planned ones."""
        for p, pin in self._pins().items():
            want = pin.get("weights_sha256")
            got = self.model_ref(p).weights_sha256()
            if want and got != want:
                raise WeightsMismatch(f"stage {self.name}: {getattr(self.params, p)!r} resolved to "
                                      f"{self.model_ref(p).path} whose weights hash to {got[:16]}…, but the build "
                                      f"was planned with {want[:16]}… (files changed or differ on this node)")

    def model_info(self) -> dict[str, Any]:
        """The `models` row: weights hash, config (with the precision), source with pinned revision."""
        infos = {p: self.model_ref(p).info() for p in self.models}
        main = infos[self.main_param]
        if len(infos) == 1:
            config = {**main["config"], "revision": main["revision"]}
            source = main["source"]
        else:
            config = {p: {**i["config"], "revision": i["revision"], "source": i["source"]} for p, i in infos.items()}
            source = "; ".join(f"{p}={i['source']}" for p, i in infos.items())
        pretrained = all(i["pretrained"] for i in infos.values())
        notes = [i["note"] for i in infos.values() if i["note"]]
        return {"weights_sha256": self.weights_hash(), "config": {**config, "precision": self.params.precision},
                "source": source, "pretrained": pretrained, "note": "; ".join(dict.fromkeys(notes)) or None}

    # loading -------------------------------------------------------------------------------------
    def load_model(self) -> Any:
        """The model on `self.device` in `self.params.precision`; `ModelConfigMismatch` if it cannot
        serve this stage (wrong class, channels, patch grid)."""
        raise NotImplementedError

    def setup(self) -> None:
        """Check the weights against the planned hash, then load them once per worker. A mismatch or
        an unfit model is kept and returned for every asset (`failed_setup`), not raised."""
        if self.model is None and self._setup_error is None:
            try:
                self.check_weights()
                self.model = self.load_model()
            except (WeightsMismatch, ModelConfigMismatch) as exc:
                log.warning("stage %s cannot run its model: %s", self.name, exc)
                self._setup_error = exc

    def failed_setup(self, tasks: list) -> list | None:
        """The setup failure as every task's result, or None when the model is loaded."""
        self.setup()
        return [self._setup_error] * len(tasks) if self._setup_error is not None else None

    # run-time settings ---------------------------------------------------------------------------
    @property
    def device(self):
        import torch

        want = str(self.config.get("device", "auto"))
        if want == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(want)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_refs"] = {}  # local paths are this machine's: a worker resolves again (at the pinned revision)
        for k in ("model", "_loader", "_writer"):
            if k in state:
                state[k] = None  # models and thread pools never travel with the stage
        return state


def _combine(hashes: Mapping[str, str]) -> str:
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    return hashlib.sha256(";".join(f"{p}:{h}" for p, h in hashes.items()).encode()).hexdigest()


__all__ = ["ModelStage", "ModelFamily", "PINS_KEY"]
