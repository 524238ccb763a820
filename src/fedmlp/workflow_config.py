"""Checks of the whole workflow config, run once when Snakemake loads it (before any job).

The stages themselves get their sections as JSON and parse them with :func:`fedmlp.config.from_dict`;
these checks see the whole config: the schema (with the methods' sections added from the registry)
and the combinations of values that a schema cannot express.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedmlp.errors import FedmlpError, one_line


def check_schema(config: dict[str, Any], schema_path: str | Path) -> None:
    """Validate the workflow config against its JSON schema (with the methods' sections added, see
    :mod:`fedmlp.schema`), then fill in the defaults. The first problem is one line naming the key
    and what is allowed (Snakemake's own message spans a screen and names the key only at the end)."""
    import jsonschema  # a dependency of Snakemake, which is the only caller

    from fedmlp.schema import fill_defaults, workflow_schema

    schema = workflow_schema(schema_path)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is None:
        fill_defaults(config, schema)
        return
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = f"{key}.{unknown[0]}" if key else unknown[0]
        raise FedmlpError(f"config key '{name}': unknown key (allowed: {', '.join(error.schema['properties'])})")
    if error.validator == "enum":
        raise FedmlpError(f"config key '{key}': {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}")
    raise FedmlpError(f"config key '{key or '(top level)'}': {one_line(error.message)}")


ORDERED_KEYS = (("train.augment.scale_min", "train.augment.scale_max"),)


def ordered_keys() -> list[tuple[str, str]]:
    """Pairs (low, high) that must be in order: the shared ones and each method section's ORDERED_KEYS."""
    from fedmlp.methods import registry

    pairs = list(ORDERED_KEYS)
    for section, cls in registry.sections().items():
        pairs += [(f"{section}.{low}", f"{section}.{high}") for low, high in getattr(cls, "ORDERED_KEYS", ())]
    return pairs


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def check_combinations(config: dict[str, Any]) -> None:
    """Values valid one by one that cannot work together, found before any work (the schema cannot say these).

    Expects a config with the schema's defaults filled in. Which classes each client annotates is
    checked by :func:`fedmlp.partition.assign_classes`; image counts of downloaded data are only known
    after ingest, so the partition stage checks those."""
    for low, high in ordered_keys():
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
