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


def one_line(message: object) -> str:
    """Messages from libraries sometimes span lines; the CLI promises one."""
    return " ".join(str(message).split())


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
    text = f"{path}: {reason}" if path is not None else reason
    return f"{text}; {hint}" if hint else text
