"""Write-then-rename helpers, so an interrupted stage never leaves a file a rerun would trust.

Temporary siblings are named ``.<target>.<random>.tmp``. A killed process (SIGKILL, power loss)
cannot remove its own; the next write of the same target removes them, so they never pile up.
An OSError while writing (a full disk, a read-only directory) is reported against the target,
not the temporary name the user never asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _temporary_name(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")  # what mkstemp/mkdtemp make below


def remove_stale(target: Path) -> None:
    """Remove what an earlier, killed write of ``target`` left beside it."""
    if not target.parent.is_dir():
        return
    pattern = _temporary_name(target)
    for entry in target.parent.iterdir():
        if pattern.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _blame_target(exc: OSError, tmp: Path, target: Path) -> None:
    if exc.filename is None or str(exc.filename).startswith(str(tmp)):
        exc.filename = str(target)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces ``target``, on error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # a read-only or full directory
        exc.filename = str(target)
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:
        _blame_target(exc, tmp_path, target)
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory: built beside ``target``, renamed into place at the end."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        exc.filename = str(target)
        raise
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        _blame_target(exc, tmp, target)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
