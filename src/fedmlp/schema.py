"""JSON schemas of method config sections, derived from their dataclasses.

A method's settings are one dataclass in its module; each field's ``metadata`` (made with
:func:`setting`) carries its description and bounds. The workflow schema
(``workflow/schemas/config.schema.yaml``) holds the shared sections; :func:`fedmlp.workflow_config.workflow_schema` adds the
method list and one section per method from the registry, so a new method needs no schema edit; the
dataset names and each dataset's section come from the source registry (:mod:`fedmlp.sources.registry`) the same way.

This module imports nothing of fedmlp: :mod:`fedmlp.config` uses it, and every command imports that,
so an import of the method registry here would put the training code (methods, models, augmentation)
into the code fingerprint of every rule (:mod:`fedmlp.fingerprint`).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import field
from typing import Any, Literal, get_args, get_origin

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def setting(default: Any, description: str = "", *, schema: dict[str, Any] | None = None, schema_default: bool = True,
            **bounds: float) -> Any:
    """A dataclass field with its schema metadata: ``setting(0.999, "EMA decay", minimum=0, maximum=1)``.
    A dataclass default is copied per instance. ``schema``: the key's JSON schema where its Python type
    cannot say it all (a pattern, an enum of list items, bounds per mapping key); it replaces the one
    derived from the type, and the bounds then only serve :func:`fedmlp.config.from_dict`.
    ``schema_default=False``: the schema gives no default, so the filled-in config leaves the key out."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unknown bound {sorted(unknown)[0]!r}")
    metadata: dict[str, Any] = {**({"description": description} if description else {}), **bounds}
    if schema is not None:
        metadata["schema"] = schema
    if not schema_default:
        metadata["schema_default"] = False
    if dataclasses.is_dataclass(default) or isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _type_schema(hint: Any) -> dict[str, Any]:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return dataclass_schema(hint)
    if origin in (types.UnionType, typing.Union):
        options = [o for o in get_args(hint) if o is not type(None)]
        inner = _type_schema(options[0]) if len(options) == 1 else {"anyOf": [_type_schema(o) for o in options]}
        if set(inner) == {"type"} and isinstance(inner["type"], str):  # str | None: one type list, its bounds beside it
            return {"type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}
    if origin is Literal:
        values = list(get_args(hint))
        return {"type": "string" if all(isinstance(v, str) for v in values) else "number", "enum": values}
    if origin is list:
        return {"type": "array", "items": _type_schema(get_args(hint)[0])}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    raise TypeError(f"no schema for {hint!r}")


def _default(f: dataclasses.Field) -> Any:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def dataclass_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        if "schema" in f.metadata:
            prop = copy.deepcopy(f.metadata["schema"])
        else:
            prop = _type_schema(hints[f.name])
            for bound in BOUNDS:
                if bound in f.metadata:
                    target = prop["anyOf"][0] if "anyOf" in prop else prop
                    target[bound] = f.metadata[bound]
        if "description" in f.metadata:
            prop["description"] = f.metadata["description"]
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if has_default and f.metadata.get("schema_default", True):
            prop["default"] = _default(f)
        properties[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "default": {}, "properties": properties}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split())
    return schema


def _leaves(schema: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """A section's settings by dotted name (nested groups such as FedMLP's ``tau0`` flattened)."""
    out = {}
    for key, prop in schema["properties"].items():
        if prop.get("type") == "object" and "properties" in prop:
            out.update(_leaves(prop, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = {k: v for k, v in prop.items() if k != "default"}
    return out


def tuning_schema(configs: dict[str, type]) -> dict[str, Any]:
    """The ``tuning`` section: per method, a list of values for any of its settings (fedmlp.tuning)."""
    methods = {}
    for name, cls in configs.items():
        leaves = _leaves(dataclass_schema(cls))
        methods[name] = {"type": ["object", "null"], "additionalProperties": False,
                         "properties": {key: {"type": "array", "minItems": 1, "maxItems": 20, "items": prop,
                                              "description": f"values of {key} to try"} for key, prop in leaves.items()}}
    return {"type": ["object", "null"], "default": None, "additionalProperties": False, "properties": methods,
            "description": "A grid per method over some of its settings; each point is a run, the point with the best mean "
                           "final-round validation mAP is reported (fedmlp.tuning, docs/comparison.md)."}


def fill_defaults(instance: Any, schema: dict[str, Any]) -> Any:
    """Fill in every default of ``schema`` missing from ``instance`` (nested objects too), in place."""
    types = schema.get("type")
    if (types == "object" or isinstance(types, list) and "object" in types) and isinstance(instance, dict):
        for key, prop in schema.get("properties", {}).items():
            if key not in instance and "default" in prop:
                instance[key] = copy.deepcopy(prop["default"])
            if key in instance:
                fill_defaults(instance[key], prop)
    return instance
