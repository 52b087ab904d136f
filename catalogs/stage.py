"""The stage contract: what every pipeline stage declares, and how its fingerprint is formed.

A stage is a named, versioned function over one asset (or a batch of assets for model stages).
It reads upstream artifacts from the store, publishes its own artifacts atomically and returns a
`StageResult` (uri, bytes, metrics). It never knows whether it runs in a test, on one machine or
on a cluster: the executor in `pipeline/` owns placement, retries, timeouts and the catalog.

fingerprint = hash(name, version, params, model-weights hash, upstream fingerprints). An artifact
is current when its stored fingerprint equals the planned one; this one rule drives resume,
incremental re-encoding and staleness reports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from catalogs.store import Store

log = logging.getLogger("trellis_data")


# -- typed failures ----------------------------------------------------------------------------
class StageError(Exception):
    """A failure of one stage on one asset. `error_type` is recorded in the catalog."""

    error_type: ClassVar[str] = "stage_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, log_text: str | None = None) -> None:
        super().__init__(message)
        self.log_text = log_text
        """Tool output (e.g. Blender's log) kept with the failure instead of being thrown away."""

    def __reduce__(self):
        # Keep `log_text` when the error crosses a process boundary (isolated workers, Ray).
        return (_rebuild_error, (type(self), str(self), self.log_text))


def _rebuild_error(cls: type[StageError], message: str, log_text: str | None) -> StageError:
    return cls(message, log_text=log_text)


class BadInput(StageError):
    error_type = "bad_input"


class CorruptFile(BadInput):
    error_type = "corrupt_file"


class EmptyFile(BadInput):
    error_type = "empty_file"


class UnsupportedFormat(BadInput):
    error_type = "unsupported_format"


class EmptyGeometry(BadInput):
    error_type = "empty_geometry"


class NonFinite(StageError):
    error_type = "non_finite"


class MissingUpstream(StageError):
    error_type = "missing_upstream"


class ModelConfigMismatch(StageError):
    error_type = "model_config_mismatch"


class WeightsMismatch(StageError):
    """The weights a worker loaded do not hash to the hash its stage was fingerprinted with."""

    error_type = "weights_mismatch"


class StageTimeout(StageError):
    error_type = "timeout"
    retryable = True


class WorkerCrashed(StageError):
    error_type = "worker_crashed"
    retryable = True


class TransientError(StageError):
    """Network hiccups, throttling: worth another attempt."""

    error_type = "transient"
    retryable = True


def classify(exc: BaseException) -> tuple[str, bool]:
    """(error_type, retryable) for any exception; unknown exceptions are recorded, not retried."""
    if isinstance(exc, StageError):
        return exc.error_type, exc.retryable
    if isinstance(exc, MemoryError):
        return "out_of_memory", True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "transient", True
    if isinstance(exc, FileNotFoundError):  # an input that vanished (or cannot be named) is per-asset
        return "not_found", False
    return f"internal:{type(exc).__name__}", False


# -- data passed to and from stages ------------------------------------------------------------
@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; `custom` names cluster resources (e.g. `{"render": 1}`)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None
    custom: Mapping[str, float] = field(default_factory=dict)

    def ray_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            args["num_gpus"] = self.num_gpus
        if self.memory:
            args["memory"] = self.memory
        if self.custom:
            args["resources"] = dict(self.custom)
        return args


@dataclass(frozen=True)
class ArtifactRef:
    """An upstream artifact handed to a stage: where it is and what its stage measured."""

    uri: str | None
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AssetTask:
    """One asset as a stage sees it: catalog fields plus the upstream artifacts it may read."""

    sha256: str
    asset: Mapping[str, Any]
    inputs: Mapping[str, ArtifactRef]

    def input(self, stage: str) -> ArtifactRef:
        ref = self.inputs.get(stage)
        if ref is None or not ref.uri:
            raise MissingUpstream(f"{self.sha256[:12]}: no current '{stage}' artifact")
        return ref


@dataclass(frozen=True)
class StageResult:
    uri: str | None
    bytes: int = 0
    metrics: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageContext:
    """Per-worker context: where to write and who is running."""

    store: Store
    run_id: str = ""
    node_id: str = ""


# -- the contract ------------------------------------------------------------------------------
class Stage:
    """Base class of every stage. Subclasses set the class attributes and implement `run`.

    `Params` (a dataclass) holds what changes the output and therefore enters the fingerprint;
    `config` holds run-time settings that do not (device, source URLs, worker counts).
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    upstream: ClassVar[tuple[str, ...]] = ()
    resources: ClassVar[Resources] = Resources()
    batch_size: ClassVar[int] = 1
    timeout_s: ClassVar[float] = 600.0
    max_attempts: ClassVar[int] = 3
    isolated: ClassVar[bool] = False
    """Run in a warm child process that is killed and replaced on timeout or crash."""

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None,
                 *, name: str | None = None, upstream: Sequence[str] | None = None):
        # A spec may run one class under another node name and wiring (e.g. a chain of no-ops).
        if name is not None:
            self.name = name
        if upstream is not None:
            self.upstream = tuple(upstream)
        known = {f.name for f in dataclasses.fields(self.Params)}
        unknown = set(params or {}) - known
        if unknown:
            raise ValueError(f"stage {self.name}: unknown params {sorted(unknown)} (known: {sorted(known)})")
        self.params = self.Params(**(params or {}))
        self.config: dict[str, Any] = dict(config or {})
        # Limits are run-time settings (a slow cluster may need longer), never fingerprinted.
        for limit, cast in (("timeout_s", float), ("max_attempts", int), ("batch_size", int)):
            if limit in self.config:
                setattr(self, limit, cast(self.config[limit]))
        # Placement is run-time too: `config: {resources: {custom: {render: 1}, num_gpus: 1}}`.
        if self.config.get("resources"):
            self.resources = dataclasses.replace(self.resources, **dict(self.config["resources"]))

    # identity ----------------------------------------------------------------------------------
    @property
    def variant(self) -> str:
        """Which of several coexisting outputs of this stage (e.g. the model name); '' if one."""
        return ""

    def weights_hash(self) -> str | None:
        """sha256 of the model weights this stage runs, or None for model-free stages."""
        return None

    def pins(self) -> dict[str, Any]:
        """Config entries the planner resolved for the workers (e.g. a model's pinned Hub revision and
        weights hash); the executor adds them to the config every worker builds the stage with."""
        return {}

    def model_info(self) -> dict[str, Any] | None:
        """The model this stage runs, recorded by the driver in the catalog's `models` table:
        {weights_sha256, config, source, pretrained, note}. None for model-free stages."""
        return None

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def fingerprint(self, upstream_fingerprints: Mapping[str, str]) -> str:
        payload = {
            "name": self.name,
            "version": self.version,
            "params": self.params_dict(),
            "weights": self.weights_hash(),
            "upstream": {k: upstream_fingerprints[k] for k in sorted(self.upstream)},
        }
        blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    # work --------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Expensive once-per-worker set-up (load a model, import bpy). Default: nothing."""

    def run(self, task: AssetTask, ctx: StageContext) -> StageResult:
        raise NotImplementedError

    def run_batch(self, tasks: Sequence[AssetTask], ctx: StageContext) -> list[StageResult | BaseException]:
        """Batch entry for model stages; the default runs `run` per task, failures per task."""
        out: list[StageResult | BaseException] = []
        for t in tasks:
            try:
                out.append(self.run(t, ctx))
            except Exception as exc:  # recorded per asset by the executor
                out.append(exc)
        return out
