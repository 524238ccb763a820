"""Checks of the whole workflow config, run once when Snakemake loads it (before any job).

The stages themselves get their sections as JSON and parse them with :func:`fedmlp.config.from_dict`;
these checks see the whole config: the schema (with the methods' sections added from the registry)
and the combinations of values that a schema cannot express.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from fedmlp.errors import FedmlpError, one_line
from fedmlp.sweep import Setting, federation_settings


def _dotted(path: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def check_finite(value: Any, path: tuple = ()) -> None:
    """No NaN or infinity anywhere (YAML's ``.nan``, ``.inf``): every comparison with NaN is false, so
    such a value would pass every bound of the schema."""
    if isinstance(value, float) and not math.isfinite(value):
        raise FedmlpError(f"config key '{_dotted(path) or '(top level)'}': {value} is not a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite(item, (*path, index))


# Strings read as the schema's other types (YAML 1.2 core schema, stricter): Snakemake hands nested
# ``--config`` values over as strings. Left out on purpose: YAML 1.1's yes/no/on/off/y/n (strings in
# YAML 1.2), leading zeros (octal in YAML 1.1, decimal in 1.2), 0x/0o, digit separators, .inf/.nan.
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLEANS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INTEGER = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_NUMBER = re.compile(r"[-+]?(\.[0-9]+|(0|[1-9][0-9]*)(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_ANY_TYPE = frozenset({"string", "number", "integer", "boolean", "null", "array", "object"})


def _branches(schema: Any) -> list[dict[str, Any]]:
    """The schema and the alternatives it allows (anyOf, oneOf, allOf), flattened."""
    if not isinstance(schema, dict):
        return []
    out = [schema]
    for keyword in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(keyword, ()):
            out += _branches(branch)
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else "other"


def _allowed_types(schema: Any) -> frozenset[str]:
    """JSON types a value may have; every type where some branch does not say (so no coercion)."""
    types: set[str] = set()
    for branch in _branches(schema):
        if "type" in branch:
            types |= {branch["type"]} if isinstance(branch["type"], str) else set(branch["type"])
        elif "enum" in branch:
            types |= {_json_type(v) for v in branch["enum"]}
        elif not any(k in branch for k in ("anyOf", "oneOf", "allOf")):
            return _ANY_TYPE
    return frozenset(types) if types else _ANY_TYPE


def _from_string(text: str, types: frozenset[str]) -> Any:
    """``text`` as the first of null, boolean, integer, number that ``types`` allows and it spells
    exactly; otherwise ``text`` itself (validation then names the key)."""
    if "string" in types:
        return text
    if "null" in types and text in _NULLS:
        return None
    if "boolean" in types and text in _BOOLEANS:
        return _BOOLEANS[text]
    if types & {"integer", "number"} and _INTEGER.fullmatch(text):
        return int(text)
    if "number" in types and _NUMBER.fullmatch(text):
        return float(text)
    return text


def coerce_strings(value: Any, schema: Any) -> Any:
    """A copy of ``value`` with strings turned into what ``schema`` expects where it expects no string
    and they spell that type unambiguously (``snakemake --config "fedmlp={lambda_cr: 0.5}"`` gives
    ``{"lambda_cr": "0.5"}``). Strings where a string is allowed are kept as they are."""
    if isinstance(value, str):
        return _from_string(value, _allowed_types(schema))
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            sub: Any = None
            for branch in _branches(schema):
                if key in branch.get("properties", {}):
                    sub = branch["properties"][key]
                    break
                if isinstance(branch.get("additionalProperties"), dict):
                    sub = branch["additionalProperties"]
            out[key] = coerce_strings(item, sub) if sub is not None else item
        return out
    if isinstance(value, list):
        items = next((b["items"] for b in _branches(schema) if isinstance(b.get("items"), dict)), None)
        return [coerce_strings(item, items) for item in value] if items is not None else list(value)
    return value


def _validator(schema: dict[str, Any]):
    """Draft 2020-12, except that ``integer`` means an integer, not also a float such as 64.0 (which
    would end up in paths as ``header64.0``); ``from_dict`` refuses those too."""
    import jsonschema  # a dependency of Snakemake, which is the only caller

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(base, type_checker=checker)(schema)


def expand_methods(config: dict[str, Any]) -> None:
    """``methods: all`` becomes the list of every registered method (what every later step reads)."""
    if config.get("methods") == "all":
        from fedmlp.methods import registry

        config["methods"] = registry.names()


def workflow_schema(path: str | Path) -> dict[str, Any]:
    """The workflow's schema file plus what the registries define: the dataset names and one section
    per dataset (placed after ``replicates``, where the docs list them), the method names and one
    section per method."""
    import yaml

    from fedmlp.methods import registry
    from fedmlp.schema import dataclass_schema, tuning_schema
    from fedmlp.sources import registry as sources

    schema = yaml.safe_load(Path(path).read_text())
    dataset = schema["properties"]["dataset"]
    dataset["enum"] = sources.names()
    dataset["description"] = f"{dataset['description']} {sources.dataset_description()}."
    shared = list(schema["properties"].items())
    at = [key for key, _ in shared].index("replicates") + 1
    schema["properties"] = {**dict(shared[:at]), **sources.schema_sections(), **dict(shared[at:])}
    schema["properties"]["methods"]["anyOf"][1]["items"]["enum"] = registry.names()
    for section, cls in registry.sections().items():
        schema["properties"][section] = dataclass_schema(cls)
    schema["properties"]["tuning"] = tuning_schema({name: spec.config for name, spec in registry.specs().items() if spec.config})
    return schema


def check_schema(config: dict[str, Any], schema_path: str | Path) -> None:
    """Validate the workflow config against its JSON schema (with the methods' sections added, see
    :mod:`fedmlp.schema`), then fill in the defaults. Strings spelling the type a key expects are read
    as that type first (:func:`coerce_strings`; nested ``--config`` values arrive as strings). The
    first problem is one line naming the key and what is allowed (Snakemake's own message spans a
    screen and names the key only at the end)."""
    import jsonschema

    from fedmlp.schema import fill_defaults

    schema = workflow_schema(schema_path)
    check_replaced_keys(config)
    config.update(coerce_strings(config, schema))  # in place: Snakemake's config object
    check_finite(config)
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(config))
    if error is None:
        fill_defaults(config, schema)
        expand_methods(config)
        return
    key = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        name = f"{key}.{unknown[0]}" if key else unknown[0]
        raise FedmlpError(f"config key '{name}': unknown key (allowed: {', '.join(error.schema['properties'])})")
    if error.validator == "enum":
        raise FedmlpError(f"config key '{key}': {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}")
    if error.validator == "type" and isinstance(error.instance, float) and error.instance.is_integer():
        raise FedmlpError(f"config key '{key}': {error.instance!r} is not an integer (write {int(error.instance)})")
    if error.validator == "type" and error.validator_value == "boolean" and isinstance(error.instance, str):
        raise FedmlpError(f"config key '{key}': {error.instance!r} is not of type 'boolean' (write true or false)")
    raise FedmlpError(f"config key '{key or '(top level)'}': {one_line(error.message)}")


def check_replaced_keys(config: dict[str, Any]) -> None:
    """A key a method section no longer has (its dataclass's ``REPLACED_KEYS``) is refused with what
    replaced it, rather than as an unknown key."""
    from fedmlp.methods import registry

    for section, cls in registry.sections().items():
        for key, replacement in getattr(cls, "REPLACED_KEYS", {}).items():
            if isinstance(config.get(section), dict) and key in config[section]:
                raise FedmlpError(f"config key '{section}.{key}': {replacement}")


def check_config_files(paths: list[str | Path]) -> None:
    """Refuse a config file in which one mapping has the same key twice: YAML loaders keep the last
    one silently, so a repeated section would replace the first. Snakemake reads the files itself;
    this reads them again, with a loader that refuses duplicates."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise FedmlpError(f"{self.name}:{line}: key {key!r} appears twice in one mapping (first on line {seen[key]}); "
                                      "a repeated key would silently replace the first: keep one")
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    for path in paths:
        with open(path, encoding="utf-8") as handle:
            yaml.load(handle, Loader=Loader)  # noqa: S506 (a SafeLoader)


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
    check_round_budget(config)
    if config["dataset"] == "synthetic-ich":  # a preset with prevalence or cooccurrence left set, say
        from fedmlp.config import from_dict
        from fedmlp.sources.synthetic import SyntheticConfig, label_model

        label_model(from_dict(SyntheticConfig, config["synthetic"], "synthetic"))
    for low, high in ordered_keys():
        if _lookup(config, low) > _lookup(config, high):
            raise FedmlpError(f"config key '{low}': {_lookup(config, low)} is more than '{high}' ({_lookup(config, high)})")
    for setting in federation_settings(config):
        _check_federation(config, setting)


def _check_federation(config: dict[str, Any], setting: Setting) -> None:
    """One federation setting against the data; the key named is where the setting's value was set."""
    fed = setting.federation
    if fed["images_per_client"] is not None and fed["partition"] != "paper":
        raise FedmlpError(f"config key '{setting.key('images_per_client')}': only used by partition 'paper', not {fed['partition']!r}; set it to null")
    if config["dataset"] == "synthetic-ich":
        from fedmlp.partition import MIN_CLIENT_IMAGES, check_room_for_clients, validation_size

        n = config["synthetic"]["n_images"]
        n_train = n - math.ceil((1 - config["split"]["train_fraction"]) * n)
        needed = fed["n_clients"] * MIN_CLIENT_IMAGES
        if n_train < needed:
            raise FedmlpError(
                f"config key '{setting.key('n_clients')}': {fed['n_clients']} clients need at least {needed} "
                f"training images; synthetic.n_images {n} with split.train_fraction {config['split']['train_fraction']} gives {n_train}"
            )
        n_val = validation_size(n_train, config["split"]["val_fraction"])
        n_train -= n_val
        check_room_for_clients(n_train, n_val, fed["n_clients"])
        per_client = fed["images_per_client"]
        if per_client is not None and per_client > n_train // fed["n_clients"]:
            raise FedmlpError(f"config key '{setting.key('images_per_client')}': {per_client} is more than the {n_train // fed['n_clients']} "
                              f"training images each of {fed['n_clients']} clients draws from synthetic.n_images {n}")


def check_round_budget(config: dict[str, Any]) -> None:
    """One round budget per experiment: the report puts every method in one table, so FedMLP trains
    ``train.rounds`` like every other method, its warm-up first and stage 2 the rest (at least one)."""
    from fedmlp.methods import registry
    from fedmlp.methods.fedmlp import warmup_too_long

    specs = registry.specs()
    if not any(m in specs and specs[m].section == "fedmlp" for m in config["methods"]):
        return
    if config["fedmlp"]["warmup_rounds"] >= config["train"]["rounds"]:
        raise FedmlpError(warmup_too_long(config["fedmlp"]["warmup_rounds"], config["train"]["rounds"]))
