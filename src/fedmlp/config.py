"""Typed settings for each stage.

Snakemake validates the whole config against ``workflow/schemas/config.schema.yaml`` and passes each
rule only the section it depends on (as JSON), so a changed value reruns exactly the stages that read
it. The CLI turns that JSON into these dataclasses; unknown or mistyped keys fail with the key named.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, get_origin

from fedmlp.errors import FedmlpError

T = TypeVar("T")


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic head-CT source (docs/data.md)."""

    n_images: int = 2000
    image_size: int = 128
    seed: int = 2024
    prevalence: dict[str, float] = field(
        default_factory=lambda: {
            "epidural": 0.2,
            "intraparenchymal": 0.2,
            "intraventricular": 0.2,
            "subarachnoid": 0.2,
            "subdural": 0.2,
        }
    )
    cooccurrence: float = 0.3
    signed_as_unsigned_fraction: float = 0.1
    multivalued_window_fraction: float = 0.2
    duplicated_images: int = 2


@dataclass(frozen=True)
class IchConfig:
    """RSNA ICH from Kaggle; ``root`` points at an existing download instead."""

    root: str | None = None
    competition: str = "rsna-intracranial-hemorrhage-detection"
    keep_archives: bool = False


@dataclass(frozen=True)
class ChestXray14Config:
    """NIH ChestX-ray14; ``root`` points at an existing download instead."""

    root: str | None = None
    classes: list[str] = field(
        default_factory=lambda: ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax"]
    )
    archive_base_url: str = "https://nihcc.box.com/shared/static"
    metadata_base_url: str | None = None
    keep_archives: bool = False


@dataclass(frozen=True)
class PreprocessConfig:
    """``max_skipped_fraction``: ingest skips and lists unusable image files, and fails when they are
    more than this share of all image files (a systematic problem, not a few corrupt files)."""

    windowing: Literal["header", "bsb"] = "header"
    size: int = 64
    max_skipped_fraction: float = 0.05


@dataclass(frozen=True)
class SplitConfig:
    """``paper``: image-level random split, the test set being the first ``ceil((1 - train_fraction) * N)``
    positions of one permutation (the paper's code). ``official``: ChestX-ray14's patient-level lists."""

    method: Literal["paper", "official"] = "paper"
    train_fraction: float = 0.7
    seed: int = 2023


@dataclass(frozen=True)
class FederationConfig:
    n_clients: int = 5
    partition: Literal["iid", "dirichlet", "paper"] = "iid"
    dirichlet_alpha: float = 0.5
    annotated_per_client: int = 1
    annotated_classes: list[list[str]] | None = None
    images_per_client: int | None = None
    seed: int = 1037


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["compact-cnn", "resnet18"] = "compact-cnn"
    width: int = 16
    pretrained: bool = False
    weights_path: str | None = None
    weights_sha256: str | None = None


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 10.0
    translate: float = 0.06
    scale_min: float = 0.9
    scale_max: float = 1.1
    hflip: bool = True


@dataclass(frozen=True)
class TrainConfig:
    rounds: int = 20
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 1
    eval_every: int = 1
    deterministic: bool = False


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
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    absent = [name for name in required if name not in values]
    if absent:
        raise FedmlpError(f"config key '{key}.{absent[0]}': required")
    return cls(**values)


def from_json(cls: type[T], text: str, key: str) -> T:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FedmlpError(f"settings for '{key}' are not valid JSON: {exc}") from None
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
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise FedmlpError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")
