"""HTTP downloads that survive real networks: resume, retry with backoff, verify, never trust a bad file.

A download goes to ``NAME.part`` and continues from its size with an HTTP Range request; a server
that ignores the range starts it over. Network errors and 5xx answers are retried with exponential
backoff. The finished file is checked against its MD5 (when one is known) before it is renamed into
place, and a ``NAME.verified`` marker records its size and digest so a finished download is not
repeated. A file with the wrong digest is moved aside to ``NAME.bad-md5``: kept for inspection,
never used, and never where a rerun would trust it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from fedmlp.errors import FedmlpError
from fedmlp.progress import bar

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}


def check_url(url: str | None, key: str) -> None:
    """An http(s) URL with a host, or null; anything else would fail deep inside urllib."""
    from urllib.parse import urlsplit

    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FedmlpError(f"config key '{key}': {url!r} is not an http:// or https:// URL")


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK * 4):
            digest.update(block)
    return digest.hexdigest()


def _marker(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified")


def is_complete(dest: Path, md5: str | None) -> bool:
    """A finished, verified download: the file, and a marker with its size and (expected) digest."""
    marker = _marker(dest)
    if not (dest.exists() and marker.exists()):
        return False
    size, digest = marker.read_text().split()
    return int(size) == dest.stat().st_size and (md5 is None or digest == md5)


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "fedmlp", **({"Range": f"bytes={offset}-"} if offset else {})})
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http/https URLs from the config)


def fetch(url: str, dest: Path, md5: str | None = None, retries: int = 5, backoff: float = 2.0, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (see the module docstring). Returns ``dest``."""
    if is_complete(dest, md5):
        log.info("%s: already downloaded and verified", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            with _open(url, offset, timeout) as response:
                if offset and response.status != 206:
                    log.info("%s: the server ignored the range request; starting over", url)
                    offset = 0
                length = response.headers.get("Content-Length")
                total = offset + int(length) if length is not None else None
                with open(part, "ab" if offset else "wb") as handle, bar(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name
                ) as progress:
                    while block := response.read(CHUNK):
                        handle.write(block)
                        progress.update(len(block))
            if total is not None and part.stat().st_size < total:
                raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # range not satisfiable: the part is already whole (or too long)
                break
            if exc.code not in RETRYABLE_HTTP or attempt == retries:
                raise FedmlpError(f"{url}: HTTP {exc.code} {exc.reason} while downloading {dest.name}") from None
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            if attempt == retries:
                raise FedmlpError(f"{url}: download of {dest.name} failed after {retries + 1} attempts ({exc})") from None
            reason = str(exc)
        wait = backoff * 2**attempt
        log.warning("%s: %s; retrying in %.0f s (attempt %d of %d)", dest.name, reason, wait, attempt + 2, retries + 1)
        time.sleep(wait)

    digest = md5sum(part)
    if md5 is not None and digest != md5:
        bad = dest.with_name(dest.name + ".bad-md5")
        os.replace(part, bad)
        raise FedmlpError(f"{dest.name}: MD5 {digest} does not match the expected {md5}; the file was moved aside to {bad}")
    os.replace(part, dest)
    _marker(dest).write_text(f"{dest.stat().st_size} {md5 or digest}\n")
    log.info("%s: downloaded and verified (%d bytes)", dest, dest.stat().st_size)
    return dest
