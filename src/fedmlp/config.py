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
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from fedmlp.errors import FedmlpError, one_line

T = TypeVar("T")


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic head-CT source (DESIGN §4.3)."""

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


@dataclass(frozen=True)
class ThresholdConfig:
    """Bounds of the adaptive selection fraction, and the published code's fixed fraction per round."""

    min: float
    max: float
    fixed: float


@dataclass(frozen=True)
class FedMLPConfig:
    """FedMLP (DESIGN §5). Stage 1 keys: warmup_rounds, lambda_dis, logit_adjust; the rest is stage 2."""

    warmup_rounds: int = 8
    rounds: int = 12
    lambda_dis: float = 1.0
    lambda_cr: float = 1.0
    logit_adjust: bool = True
    selection: Literal["adaptive", "fixed"] = "adaptive"
    accumulate: bool = True
    variant: Literal["paper", "official-code"] = "paper"
    confidence_low: float = 0.3
    confidence_high: float = 0.7
    tau0: ThresholdConfig = field(default_factory=lambda: ThresholdConfig(min=0.0, max=0.1, fixed=0.005))
    tau1: ThresholdConfig = field(default_factory=lambda: ThresholdConfig(min=0.0, max=0.02, fixed=0.01))

    STAGE1_KEYS = ("warmup_rounds", "lambda_dis", "logit_adjust")


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


def check_schema(config: dict[str, Any], schema_path: str | Path) -> None:
    """Validate the workflow config against its JSON schema; the first problem as one line naming the
    key and what is allowed (Snakemake's own message spans a screen and names the key only at the end)."""
    import jsonschema  # a dependency of Snakemake, which is the only caller
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = f"{key}.{unknown[0]}" if key else unknown[0]
        raise FedmlpError(f"config key '{name}': unknown key (allowed: {', '.join(error.schema['properties'])})")
    if error.validator == "enum":
        raise FedmlpError(f"config key '{key}': {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}")
    raise FedmlpError(f"config key '{key or '(top level)'}': {one_line(error.message)}")


ORDERED_KEYS = (
    ("fedmlp.tau0.min", "fedmlp.tau0.max"),
    ("fedmlp.tau1.min", "fedmlp.tau1.max"),
    ("fedmlp.confidence_low", "fedmlp.confidence_high"),
    ("train.augment.scale_min", "train.augment.scale_max"),
)


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def check_combinations(config: dict[str, Any]) -> None:
    """Values valid one by one that cannot work together, found before any work (the schema cannot say these).

    Expects a config with the schema's defaults filled in. Which classes each client annotates is
    checked by :func:`fedmlp.partition.assign_classes`; image counts of downloaded data are only known
    after ingest, so the partition stage checks those."""
    for low, high in ORDERED_KEYS:
        if _lookup(config, low) > _lookup(config, high):
            raise FedmlpError(f"config key '{low}': {_lookup(config, low)} is more than '{high}' ({_lookup(config, high)})")
    fed = config["federation"]
    if fed["images_per_client"] is not None and fed["partition"] != "paper":
        raise FedmlpError(f"config key 'federation.images_per_client': only used by partition 'paper', not {fed['partition']!r}; set it to null")
    if config["dataset"] == "synthetic-ich":
        from fedmlp.partition import MIN_CLIENT_IMAGES

        n = config["synthetic"]["n_images"]
        n_train = n - math.ceil((1 - config["split"]["train_fraction"]) * n)
        if n_train < fed["n_clients"] * MIN_CLIENT_IMAGES:
            raise FedmlpError(
                f"config key 'federation.n_clients': {fed['n_clients']} clients need at least {fed['n_clients'] * MIN_CLIENT_IMAGES} "
                f"training images; synthetic.n_images {n} with split.train_fraction {config['split']['train_fraction']} gives {n_train}"
            )
        per_client = fed["images_per_client"]
        if per_client is not None and per_client > n_train // fed["n_clients"]:
            raise FedmlpError(f"config key 'federation.images_per_client': {per_client} is more than the {n_train // fed['n_clients']} "
                              f"training images each of {fed['n_clients']} clients draws from synthetic.n_images {n}")
