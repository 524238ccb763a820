"""Write-then-rename helpers, so an interrupted or failed command never leaves a file a rerun would trust.

Temporary siblings are named ``.<target>.<random>.tmp``. A killed process (SIGKILL, power loss)
cannot remove its own; the next write of the same target removes them, so they never pile up.
An OSError while writing (a full disk, a read-only directory) is reported against the target,
not the temporary name the user never asked for.

Three more promises:

- **One writer per target.** A write holds an exclusive lock on ``.<target>.lock`` (``flock``) from
  the cleanup of stale temporaries to the rename, so a second process writing the same target fails
  at once with one line instead of deleting the first one's live temporary.
- **All of a command's outputs, or none.** Inside :func:`output_group` (the CLI opens one around
  every command) the renames wait until the group ends without an error; a command that fails half
  way leaves none of its new outputs. Writes that must survive a failure (the resume state between
  rounds, ingest's skipped-files report) pass ``now=True``.
- **The umask is respected.** ``mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask; the
  temporaries are given the mode an ordinary ``open``/``mkdir`` would have given them.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmlp.errors import FedmlpError


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic two calls
    os.umask(mask)
    return mask


def _temporary_name(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")  # what mkstemp/mkdtemp make below


_LIVE: set[Path] = set()  # temporaries of this process not yet renamed (a group can hold several per target)


def remove_stale(target: Path) -> None:
    """Remove what an earlier, killed write of ``target`` left beside it (call with the target's lock held)."""
    if not target.parent.is_dir():
        return
    pattern = _temporary_name(target)
    for entry in target.parent.iterdir():
        if pattern.fullmatch(entry.name) and entry not in _LIVE:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


_HELD: dict[Path, list[int]] = {}  # lock file → [how many writes of this process hold it, its descriptor]


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the write lock of ``target``, or fail at once naming it if another process holds it.

    Re-entrant within a process. The lock file is removed on release; a lock file that was removed
    or replaced between opening and locking it is opened again (the holder unlinks before closing)."""
    lock = lock_path(target)
    if lock in _HELD:
        _HELD[lock][0] += 1
        try:
            yield
        finally:
            _release(lock)
        return
    while True:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            exc.filename = str(target)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise FedmlpError(f"{target}: another process is writing it right now (it holds {lock}); "
                                  "wait for it to finish, or stop it") from None
            raise
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _HELD[lock] = [1, fd]
    try:
        yield
    finally:
        _release(lock)


def _release(lock: Path) -> None:
    """Drop one hold of ``lock``; the last one removes the lock file, then unlocks (closes) it."""
    _HELD[lock][0] -= 1
    if not _HELD[lock][0]:
        _, fd = _HELD.pop(lock)
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


@dataclass
class _Group:
    pending: list[tuple[Path, Path]] = field(default_factory=list)  # (temporary, target), in the order written
    locks: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


_GROUP: contextvars.ContextVar[_Group | None] = contextvars.ContextVar("fedmlp_output_group", default=None)


def _discard(path: Path) -> None:
    _LIVE.discard(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _install(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target`` (a directory replaces the old one)."""
    try:
        if tmp.is_dir() and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        _blame_target(exc, tmp, target)
        raise
    finally:
        _LIVE.discard(tmp)


@contextlib.contextmanager
def output_group() -> Iterator[None]:
    """Writes inside this block are renamed into place only when it ends without an error."""
    if _GROUP.get() is not None:  # nested: the outer group decides
        yield
        return
    group = _Group()
    token = _GROUP.set(group)
    try:
        with group.locks:
            try:
                yield
                for tmp, target in group.pending:
                    _install(tmp, target)
            finally:
                for tmp, _ in group.pending:
                    if tmp in _LIVE:
                        _discard(tmp)
    finally:
        _GROUP.reset(token)


def _blame_target(exc: OSError, tmp: Path, target: Path) -> None:
    if exc.filename is None or str(exc.filename).startswith(str(tmp)):
        exc.filename = str(target)


def _make_temporary(target: Path, directory: bool) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
            os.chmod(tmp, 0o777 & ~current_umask())
        else:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            tmp = Path(name)
            os.fchmod(fd, 0o666 & ~current_umask())
            os.close(fd)
    except OSError as exc:  # a read-only or full directory
        exc.filename = str(target)
        raise
    _LIVE.add(tmp)
    return tmp


@contextlib.contextmanager
def _atomic(target: Path, directory: bool, now: bool) -> Iterator[Path]:
    target = Path(target)
    inside_own = any(parent in _LIVE for parent in target.parents)  # a file of a directory being built: that is the unit
    group = None if now or inside_own else _GROUP.get()
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if not inside_own:
            stack.enter_context(exclusive(target))
            remove_stale(target)
        tmp = _make_temporary(target, directory)
        try:
            yield tmp
        except BaseException as exc:
            if isinstance(exc, OSError):
                _blame_target(exc, tmp, target)
            _discard(tmp)
            raise
        if group is None:
            try:
                _install(tmp, target)
            finally:
                if tmp.exists():
                    _discard(tmp)
        else:
            group.pending.append((tmp, target))
            group.locks.enter_context(exclusive(target))  # held until the group renames it


def written(target: Path) -> Path:
    """Where ``target``'s new content can be read now: the temporary that an open :func:`output_group`
    still holds back (the latest write of it), else ``target`` itself."""
    group, wanted = _GROUP.get(), os.path.abspath(target)
    pending = [tmp for tmp, path in (group.pending if group else []) if os.path.abspath(path) == wanted]
    return pending[-1] if pending else Path(target)


def atomic_path(target: Path, *, now: bool = False) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary sibling path; on success it replaces ``target`` (at the end of the
    :func:`output_group`, if one is open and not ``now``), on error it is removed."""
    return _atomic(target, directory=False, now=now)


def atomic_dir(target: Path, *, now: bool = False) -> contextlib.AbstractContextManager[Path]:
    """Like :func:`atomic_path` for a directory: built beside ``target``, renamed into place at the end."""
    return _atomic(target, directory=True, now=now)


def write_json(path: Path, data: Any, *, now: bool = False) -> None:
    with atomic_path(path, now=now) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str, *, now: bool = False) -> None:
    with atomic_path(path, now=now) as tmp:
        tmp.write_text(text)


def binary_size(n: int) -> str:
    """``1.9 TiB``: a byte count as people read it (the exact count goes beside it in messages)."""
    value, unit = float(n), "bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}" if n >= 1024 else f"{n} bytes"


def require_free_space(target: Path, setting: str, what: str, *, size: int, count: int = 1,
                       advice: str = "lower it, free some space, or write elsewhere") -> None:
    """Refuse, before writing anything, ``count`` files of at least ``size`` bytes each under
    ``target`` that its file system has no room for (each file rounded up to the file system's
    block), naming ``setting`` (the config key or option that asked for them) and the bytes needed
    against the bytes free. A lower bound, so a size that fits is never refused; writing can still
    run out (others write too), which the writers' own clean-up covers."""
    directory = next(p for p in (Path(target).absolute(), *Path(target).absolute().parents) if p.exists())
    stats = os.statvfs(directory)
    block = stats.f_frsize or 4096
    needed = count * -(-size // block) * block
    free = stats.f_bavail * stats.f_frsize  # what an unprivileged process may use, as shutil.disk_usage says
    if needed > free:
        raise FedmlpError(f"{setting}: {what} need at least {needed:,} bytes ({binary_size(needed)}) in {directory}, which has "
                          f"{free:,} bytes ({binary_size(free)}) free; {advice}")


def _overwrites(output: Path, source: Path) -> bool:
    """``output`` is ``source`` (the same path, or the same file through a hard link), or something that
    exists inside the directory ``source`` (a file of a store; a new file beside them overwrites nothing)."""
    if output == source or (output.is_relative_to(source) and (output.exists() or output.is_symlink())):
        return True
    try:
        return os.path.samefile(output, source)
    except OSError:  # either does not exist yet
        return False


def check_outputs_apart(outputs: dict[str, Path], inputs: dict[str, Path], replaced: frozenset[str] = frozenset()) -> None:
    """Refuse, before any work, a command whose output would overwrite one of its inputs.

    ``outputs`` and ``inputs`` map an option (``--out-model``) to a path. An output clashes with an
    input that is the same file (through links too), or that exists inside an input directory (a file
    of a store); an output in ``replaced`` (a directory the command replaces whole) also with an input inside it.
    Two outputs naming the same file clash too (the second would overwrite the first)."""
    resolved_in = {option: path.resolve() for option, path in inputs.items()}
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        out = path.resolve()
        for in_option, inp in resolved_in.items():
            if _overwrites(out, inp) or (option in replaced and out in inp.parents):
                raise FedmlpError(f"{option} {path}: would overwrite the input {in_option} {inputs[in_option]}; "
                                  "write the output elsewhere")
        if out in seen:
            raise FedmlpError(f"{option} {path}: the same file as {seen[out]}; give each output its own path")
        seen[out] = option
