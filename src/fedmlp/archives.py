"""Extraction that refuses members landing outside the target: absolute paths, ``..``, links, devices."""

from __future__ import annotations

import logging
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from fedmlp.errors import FedmlpError

log = logging.getLogger(__name__)


def _check_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise FedmlpError(f"{archive}: refusing member {name!r}: it would land outside the target directory")


def extract_tar(archive: Path, target: Path) -> int:
    """Extract a (compressed) tar archive into ``target`` after checking every member. Returns the file count."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_name(archive, member.name)
                if member.issym() or member.islnk():
                    raise FedmlpError(f"{archive}: refusing member {member.name!r}: links are not extracted")
                if not (member.isfile() or member.isdir()):
                    raise FedmlpError(f"{archive}: refusing member {member.name!r}: not a regular file or directory")
            target.mkdir(parents=True, exist_ok=True)
            tar.extractall(target, members=members, filter="data")  # the stdlib's own guard, as a second line
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FedmlpError(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    return sum(m.isfile() for m in members)


def extract_zip(archive: Path, target: Path, keep: Callable[[str], bool] | None = None) -> int:
    """Extract a zip archive (only members for which ``keep`` is true) after checking every member."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if keep is None or keep(i.filename)]
            for info in infos:
                _check_name(archive, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise FedmlpError(f"{archive}: refusing member {info.filename!r}: links are not extracted")
            target.mkdir(parents=True, exist_ok=True)
            zf.extractall(target, members=infos)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise FedmlpError(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    return sum(not i.is_dir() for i in infos)
