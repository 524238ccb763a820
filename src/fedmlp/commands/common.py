"""Small helpers shared by the command modules: JSON options and files, option types, and which
options name the command's inputs and outputs (so that no output overwrites an input)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmlp.config import SEED_MAX
from fedmlp.errors import FedmlpError, one_line
from fedmlp.inputs import read_json

__all__ = ["read_json", "parse_json_option", "count", "seed", "declare_paths", "check_paths"]


def parse_json_option(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise FedmlpError(f"{option} is not valid JSON: {one_line(exc)}") from None


def _integer(low: int, high: int | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range (expected {low} to {high})" if high is not None
                                             else f"{value} is less than {low}")
        return value

    parse.__name__ = "integer"
    return parse


def count(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` (default 1) to ``high``."""
    return _integer(low, high)


seed = _integer(0, SEED_MAX)  # numpy's legacy seeding takes seeds below 2**32


@dataclass(frozen=True)
class PathOptions:
    """A subcommand's path options by role; ``replaced``: outputs that are directories replaced whole;
    ``places``: where a command runs (a repository), neither read as data nor written, so not checked."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    replaced: tuple[str, ...] = ()
    places: tuple[str, ...] = ()


def declare_paths(p: argparse.ArgumentParser, inputs: Sequence[str] = (), outputs: Sequence[str] = (),
                  replaced: Sequence[str] = (), places: Sequence[str] = ()) -> None:
    """Name the options (``--store``, or a positional's name) that a subcommand reads and writes;
    the CLI checks them apart (:func:`check_paths`) before the command runs."""
    p.set_defaults(path_options=PathOptions(tuple(inputs), (*outputs, *replaced), tuple(replaced), tuple(places)))


def _given(args: argparse.Namespace, options: Sequence[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for option in options:
        value = getattr(args, option.lstrip("-").replace("-", "_"), None)
        values = value if isinstance(value, list) else [value]
        shown = option if option.startswith("-") else option.upper()  # a positional as its usage shows it (METRICS)
        found.update({shown if len(values) == 1 else f"{shown} #{k + 1}": v for k, v in enumerate(values) if v is not None})
    return found


def check_paths(args: argparse.Namespace) -> None:
    """No output of the command may be one of its inputs, or lie inside an input directory (one line, before any work)."""
    from fedmlp.atomic import check_outputs_apart

    options = getattr(args, "path_options", None)
    if options is not None:
        check_outputs_apart(_given(args, options.outputs), _given(args, options.inputs), frozenset(_given(args, options.replaced)))
