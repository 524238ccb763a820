"""Typed settings for each stage.

Snakemake validates the whole config against ``workflow/schemas/config.schema.yaml`` and passes each
rule only the section it depends on (as JSON), so a changed value reruns exactly the stages that read
it. The CLI turns that JSON into these dataclasses; unknown or mistyped keys fail with the key named.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

from fedmlp.errors import FedmlpError, one_line
from fedmlp.schema import BOUNDS

T = TypeVar("T")

SEED_MAX = 2**32 - 1  # numpy's legacy seeding (the paper's split and sampler) takes seeds below 2**32
MAX_ROUNDS = 100_000


def bounded(default: Any, **bounds: float) -> Any:
    """A field with the bounds the workflow schema gives it (``minimum``, ``exclusiveMaximum``, ...).
    :func:`from_dict` enforces them, so a stage run by hand refuses what the workflow would refuse;
    tests/test_config.py checks that they agree with workflow/schemas/config.schema.yaml."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unknown bound {sorted(unknown)[0]!r}")
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=bounds)
    return field(default=default, metadata=bounds)


@dataclass(frozen=True)
class PreprocessConfig:
    """``max_skipped_fraction``: ingest skips and lists unusable image files, and fails when they are
    more than this share of all image files (a systematic problem, not a few corrupt files)."""

    windowing: Literal["header", "bsb"] = "header"
    size: int = bounded(32, minimum=16, maximum=1024)
    max_skipped_fraction: float = bounded(0.05, minimum=0, maximum=1)


@dataclass(frozen=True)
class SplitConfig:
    """``paper``: image-level random split, the test set being the first ``ceil((1 - train_fraction) * N)``
    positions of one permutation (the paper's code). ``official``: ChestX-ray14's patient-level lists.
    ``val_fraction``: the share of the training images held out as the server's validation set (by
    patient for ``official``), before the clients are formed."""

    method: Literal["paper", "official"] = "paper"
    train_fraction: float = bounded(0.7, exclusiveMinimum=0, exclusiveMaximum=1)
    seed: int = bounded(2023, minimum=0, maximum=SEED_MAX)
    val_fraction: float = bounded(0.0, minimum=0, exclusiveMaximum=1)  # the workflow default (schema) is 0.05: none here, the paper's split, for library use and tests


@dataclass(frozen=True)
class FederationConfig:
    n_clients: int = bounded(5, minimum=1, maximum=10_000)
    partition: Literal["iid", "dirichlet", "paper", "site"] = "iid"
    dirichlet_alpha: float = bounded(0.5, exclusiveMinimum=0)
    annotated_per_client: int = bounded(1, minimum=1)
    annotated_classes: list[list[str]] | None = None
    images_per_client: int | None = bounded(None, minimum=1)
    seed: int = bounded(1037, minimum=0, maximum=SEED_MAX)


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["compact-cnn", "resnet18"] = "compact-cnn"
    width: int = bounded(12, minimum=4, maximum=1024)
    pretrained: bool = False
    weights_path: str | None = None
    weights_sha256: str | None = None


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = bounded(10.0, minimum=0, maximum=180)
    translate: float = bounded(0.06, minimum=0, maximum=0.5)
    scale_min: float = bounded(0.9, exclusiveMinimum=0, maximum=10)
    scale_max: float = bounded(1.1, exclusiveMinimum=0, maximum=10)
    hflip: bool = True


@dataclass(frozen=True)
class AggregationConfig:
    """How the server combines the clients' models (docs/untrusted-sites.md): ``mean`` is each
    method's own step (FedAvg's weighted mean); ``median`` and ``trimmed-mean`` replace that mean by
    a coordinate-wise robust one, unweighted; ``clip_norm`` first scales down every update whose L2
    norm (over the model's floating tensors, relative to the broadcast) exceeds it."""

    rule: Literal["mean", "median", "trimmed-mean"] = "mean"
    trim_fraction: float = bounded(0.2, minimum=0, exclusiveMaximum=0.5)
    clip_norm: float | None = bounded(None, exclusiveMinimum=0)


@dataclass(frozen=True)
class TrainConfig:
    rounds: int = bounded(20, minimum=1, maximum=MAX_ROUNDS)
    local_epochs: int = bounded(1, minimum=1, maximum=1000)
    batch_size: int = bounded(32, minimum=2, maximum=65536)
    lr: float = bounded(3e-3, exclusiveMinimum=0)
    weight_decay: float = bounded(0.0, minimum=0)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = bounded(1, minimum=1, maximum=1024)
    eval_every: int = bounded(1, minimum=1, maximum=MAX_ROUNDS)  # the workflow default (schema) is 2: every round here, for library use and tests
    deterministic: bool = False
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    # the failure policy (fedmlp.failures): None stops the run at the first failed or refused site;
    # a number drops such a site while at least this many remain (a Flower run's 'min-sites')
    min_sites: int | None = bounded(None, minimum=1)


@dataclass(frozen=True)
class EquivalenceMargin:
    """±m per metric within which two methods count as level (report.equivalence_margin)."""

    mAP: float = bounded(0.02, exclusiveMinimum=0, maximum=1)
    AUROC: float = bounded(0.02, exclusiveMinimum=0, maximum=1)


@dataclass(frozen=True)
class ClaimsConfig:
    """The report's tests (report.alpha, report.equivalence_margin; docs: README, "Paired comparisons")."""

    alpha: float = bounded(0.05, exclusiveMinimum=0, maximum=0.5)
    equivalence_margin: EquivalenceMargin = field(default_factory=EquivalenceMargin)


def from_dict(cls: type[T], data: Any, key: str) -> T:
    """Build dataclass ``cls`` from a mapping; errors name the dotted config ``key``."""
    if not isinstance(data, dict):
        raise FedmlpError(f"config key '{key}': expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise FedmlpError(f"config key '{key}.{unknown[0]}': unknown key (allowed: {', '.join(sorted(names))})")
    values = {name: _coerce(hints[name], value, f"{key}.{name}") for name, value in data.items()}
    for f in dataclasses.fields(cls):
        if f.name in values:
            check_bounds(values[f.name], f.metadata, f"{key}.{f.name}")
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    absent = [name for name in required if name not in values]
    if absent:
        raise FedmlpError(f"config key '{key}.{absent[0]}': required")
    return cls(**values)


BOUND_TESTS = {  # bound → (value violates it, jsonschema's wording)
    "minimum": (lambda v, b: v < b, "is less than the minimum of"),
    "exclusiveMinimum": (lambda v, b: v <= b, "is less than or equal to the minimum of"),
    "maximum": (lambda v, b: v > b, "is greater than the maximum of"),
    "exclusiveMaximum": (lambda v, b: v >= b, "is greater than or equal to the maximum of"),
}


def check_bounds(value: Any, bounds: Any, key: str) -> None:
    """Numbers against a field's bounds (each item of a list or mapping), in the schema's words."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_bounds(v, bounds, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_bounds(v, bounds, f"{key}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        for name, (violates, words) in BOUND_TESTS.items():
            if name in bounds and violates(value, bounds[name]):
                raise FedmlpError(f"config key '{key}': {value} {words} {bounds[name]}")


def from_json(cls: type[T], text: str, key: str) -> T:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, an integer of 5,000 digits, nesting 10,000 deep
        raise FedmlpError(f"settings for '{key}' are not valid JSON: {one_line(exc)}") from None
    return from_dict(cls, data, key)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (types.UnionType, typing.Union):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except FedmlpError as exc:
                errors.append(str(exc))
        raise FedmlpError(errors[0] if errors else f"config key '{key}': unexpected null")
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise FedmlpError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise FedmlpError(f"config key '{key}': expected a list, got {value!r}")
        (item,) = get_args(hint)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise FedmlpError(f"config key '{key}': expected a mapping, got {value!r}")
        _, item = get_args(hint)
        return {k: _coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise FedmlpError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FedmlpError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FedmlpError(f"config key '{key}': expected a number, got {value!r}")
        if not math.isfinite(value):
            raise FedmlpError(f"config key '{key}': {value} is not a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise FedmlpError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")
