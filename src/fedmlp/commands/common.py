"""Small helpers shared by the command modules: JSON options and files, and option types."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from fedmlp.config import SEED_MAX
from fedmlp.errors import FedmlpError, one_line
from fedmlp.inputs import read_json

__all__ = ["read_json", "parse_json_option", "count", "seed"]


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
