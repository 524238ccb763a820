"""Markdown references generated from the code, for the documentation site (``make docs``).

The command reference is read from the ``fedmlp`` argparse parser and the configuration reference
from the assembled workflow schema (the schema file plus each method's config dataclass), at build
time, so that neither can drift from the code. ``docs/gen_reference.py`` writes them into the site.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedmlp.cli import build_parser
from fedmlp.schema import BOUNDS
from fedmlp.workflow_config import workflow_schema

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CONFIG = REPO / "config" / "config.yaml"


def _cell(text: Any) -> str:
    """One Markdown table cell: no line breaks, no bare pipes."""
    return " ".join(str(text).split()).replace("|", "\\|")


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _options_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| option | required | default | meaning |", "|---|---|---|---|"]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.choices:
            name += " {" + ", ".join(str(c) for c in action.choices) + "}"
        takes_value = action.nargs != 0
        default = f"`{action.default}`" if takes_value and action.default not in (None, argparse.SUPPRESS) else ""
        required = "yes" if action.required else ""
        rows.append(f"| {_cell(name)} | {required} | {_cell(default)} | {_cell(action.help or '')} |")
    return rows


def command_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Every ``fedmlp`` subcommand: its one-line description, usage and options, from the parser."""
    parser = parser or build_parser()
    sub = subcommands(parser)
    helps = {a.dest: a.help for a in sub._choices_actions}
    lines = ["# Command reference", "",
             "Generated from the `fedmlp` command's argument parser (`fedmlp.cli.build_parser`) when the site is "
             "built; `fedmlp <command> --help` prints the same. See [Commands](commands.md) for what they share "
             "(exit status, errors, logging).", "",
             "## fedmlp", "", "Options before the subcommand:", "", *_options_table(parser), "",
             "| subcommand | does |", "|---|---|"]
    lines += [f"| [`{name}`](#fedmlp-{name}) | {_cell(helps.get(name, ''))} |" for name in sub.choices]
    for name, command in sub.choices.items():
        usage = command.format_usage().removeprefix("usage: ").strip()
        lines += ["", f"## fedmlp {name}", "", _cell(helps.get(name, "")), "", "```text", usage, "```", "",
                  *_options_table(command)]
    return "\n".join(lines) + "\n"


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    kind = prop.get("type", "any")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    if kind == "array" and "items" in prop:
        kind = f"list of {_type(prop['items'])}"
    bounds = [f"{b} {prop[b]}" for b in BOUNDS if b in prop]
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _lookup(config: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _rows(prop: dict[str, Any], key: str, config: dict[str, Any], depth: int | None = None) -> list[str]:
    """One table row per setting; nested objects with properties become dotted keys, down to ``depth``
    levels (None: all). Where the default experiment's config sets another value, the row says so."""
    children = prop.get("properties")
    if children and prop.get("type") in ("object", ["object", "null"]) and depth != 0:
        rows = []
        for name, child in children.items():
            rows += _rows(child, f"{key}.{name}", config, None if depth is None else depth - 1)
        return rows
    default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
    present, value = _lookup(config, key)
    if present and not children and value != prop.get("default"):
        default += f" (config.yaml: `{json.dumps(value)}`)"
    if children and "description" not in prop:  # a collapsed group: name its keys
        prop = {**prop, "description": "keys: " + ", ".join(f"`{name}`" for name in children)}
    return [f"| `{key}` | {_cell(_type(prop))} | {_cell(default)} | {_cell(prop.get('description', ''))} |"]


def config_reference(schema: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> str:
    """Every configuration key, section by section, from the assembled workflow schema, with the value
    the default experiment (``config/config.yaml``) sets where it is not the schema's default."""
    import yaml

    schema = schema or workflow_schema(SCHEMA)
    config = yaml.safe_load(CONFIG.read_text()) if config is None else config
    lines = ["# Configuration reference", "",
             "Generated from the assembled schema when the site is built: `workflow/schemas/config.schema.yaml` "
             "plus one section per registered method from its config dataclass (`fedmlp.workflow_config.workflow_schema`). "
             "*default* is the schema's, which a config file leaves out; where `config/config.yaml` (the default "
             "experiment) sets another value, it follows in parentheses. "
             "A wrong value stops the run before any work, in one line naming the key. "
             "[Configuration](configuration.md) says how to set them.", ""]
    lines += ["| section | what |", "|---|---|"]
    lines += [f"| [`{key}`](#{key}) | {_cell(prop.get('description', '').split('. ')[0])} |"
              for key, prop in schema["properties"].items()]
    for key, prop in schema["properties"].items():
        lines += ["", f"## {key}", ""]
        if prop.get("description"):
            lines += [_cell(prop["description"]), ""]
        # tuning holds, per method, a list of values for any of its settings: one row per method
        rows = _rows(prop, key, config, depth=1 if key == "tuning" else None)
        lines += ["| key | type | default | meaning |", "|---|---|---|---|", *rows]
    return "\n".join(lines) + "\n"
