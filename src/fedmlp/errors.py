"""One exception type for every problem a user can fix; the CLI prints it as one line."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class FedmlpError(Exception):
    """A user-facing error. The message names the file or config key and what was expected."""


HINTS = {
    errno.ENOSPC: "free some space or point the output elsewhere",
    errno.EDQUOT: "free some space or point the output elsewhere",
    errno.EROFS: "the output must go to a writable file system",
    errno.EACCES: "check the permissions",
    errno.EPERM: "check the permissions",
}


# C0 and C1 control characters (ESC starts a terminal escape sequence, CR rewrites the line), and the
# Unicode bidirectional overrides and isolates, which reorder what a terminal shows.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` with every control character written as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``).

    For user-controlled strings in messages (an image ID from a label file, a column name, a file
    name): printed raw, ``ID_\\x1b[31m...`` would colour or rewrite the user's terminal or log viewer."""
    return CONTROL.sub(lambda found: found[0].encode("unicode_escape").decode("ascii"), str(text))


def one_line(message: object) -> str:
    """Messages from libraries sometimes span lines; the CLI promises one, with no control characters."""
    return printable(" ".join(str(message).split()))


def describe_os_error(exc: OSError, where: Path | str | None = None) -> str:
    """``<path>: no space left on device (hint)`` for an OSError from deep inside a library.

    ``where`` stands in for the path when the error has none (a failed ``write`` names no file)."""
    path = exc.filename if exc.filename is not None else where
    code = exc.errno
    if code is None:  # re-raised by a library as OSError(message), e.g. pydicom's writer: the errno is in the text
        found = re.search(r"\[Errno (\d+)\]", str(exc))
        code = int(found[1]) if found else None
    reason = os.strerror(code).lower() if code is not None else one_line(exc)
    hint = HINTS.get(code)
    text = f"{printable(path)}: {reason}" if path is not None else reason
    return f"{text}; {hint}" if hint else text
