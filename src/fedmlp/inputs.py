"""Reading the JSON and CSV files that stages hand each other, with every problem named in one line.

A file a user can edit (a partition, a per-round CSV, a metrics file) is checked where it is read:
what is not there, not of the expected type or not a finite number is a :class:`FedmlpError`
naming the file (and the line or field), never a ``KeyError`` from deep inside a stage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedmlp.errors import FedmlpError, one_line, printable


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:  # also undecodable bytes, huge integers, deep nesting
        raise FedmlpError(f"{path}: cannot read JSON ({one_line(exc)})") from None


def read_csv(path: Path, columns: Sequence[str], numeric: Sequence[str] = (), allow_nan: Sequence[str] = (),
             text: Sequence[str] = ()) -> pd.DataFrame:
    """A CSV with at least ``columns`` and a row or more; ``numeric`` columns must hold numbers, finite
    except in ``allow_nan`` columns (where an empty cell or NaN means "not measured"); ``text``
    columns are read as strings (not as the numbers or booleans they may look like)."""
    try:
        frame = pd.read_csv(path, dtype={c: str for c in text}, keep_default_na=not text)
    except pd.errors.EmptyDataError:
        raise FedmlpError(f"{path}: empty file (expected the columns {', '.join(columns)})") from None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FedmlpError(f"{path}: cannot read CSV ({type(exc).__name__}: {one_line(exc)})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FedmlpError(f"{path}:1: missing column(s) {', '.join(missing)} (found {printable(', '.join(map(str, frame.columns)))})")
    if frame.empty:
        raise FedmlpError(f"{path}: no rows after the header")
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna() if column in allow_nan else ~values.map(_finite)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise FedmlpError(f"{path}:{row + 2}: {column} {str(frame[column].iloc[row])!r} is not a {'number' if column in allow_nan else 'finite number'}")
        frame[column] = values
    return frame


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def require(condition: bool, path: Path, problem: str) -> None:
    if not condition:
        raise FedmlpError(f"{path}: {problem}")


def id_list(value: Any, path: Path, what: str, allow_empty: bool = False) -> list[str]:
    """A list of distinct non-empty strings (image IDs, class names)."""
    require(isinstance(value, list) and all(isinstance(v, str) and v for v in value), path, f"{what}: expected a list of names")
    require(allow_empty or bool(value), path, f"{what}: empty")
    seen: set[str] = set()
    for item in value:
        require(item not in seen, path, f"{what}: {item!r} is listed twice")
        seen.add(item)
    return value
