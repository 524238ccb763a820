"""Dataset ich: RSNA ICH through the Kaggle client (docs/data.md), in the RSNA layout (:mod:`fedmlp.sources.rsna`).

Importing ``kaggle`` authenticates at import time and exits the process when there are no
credentials, so the client is imported only inside :func:`_client`, after our own check. Credential
values are never printed, logged or put in an error message.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmlp.archives import extract_zip
from fedmlp.errors import FedmlpError
from fedmlp.schema import setting
from fedmlp.sources import rsna
from fedmlp.sources.registry import Source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IchConfig:
    """RSNA ICH from Kaggle (dataset ich); root points at an existing download instead."""

    root: str | None = setting(None, "An existing download (stage_2_train/ and stage_2_train.csv); null downloads into resources/ich/raw "
                                     "with your Kaggle credentials.")
    competition: str = setting("rsna-intracranial-hemorrhage-detection", "The Kaggle competition to download.")
    keep_archives: bool = setting(False, "Keep the downloaded zip after extraction (about 180 GB).")

CREDENTIALS_HELP = "set KAGGLE_USERNAME and KAGGLE_KEY, or save kaggle.json in ~/.kaggle/ (https://www.kaggle.com/docs/api)"


def credentials_available() -> bool:
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    folders = [os.environ.get("KAGGLE_CONFIG_DIR"), Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"]
    return any(folder and (Path(folder) / "kaggle.json").is_file() for folder in folders)


def _client() -> Any:
    """The authenticated Kaggle API object (the seam tests replace)."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    return api


def _status(exc: BaseException) -> int | None:
    for candidate in (getattr(exc, "status", None), getattr(getattr(exc, "response", None), "status_code", None)):
        if isinstance(candidate, int):
            return candidate
    return None


def _is_train_member(name: str) -> bool:
    return name == rsna.LABEL_FILE or name.startswith(f"{rsna.IMAGE_DIR}/")


def download(raw_dir: Path, config: IchConfig) -> None:
    """Download the competition archive, check it is whole, extract the training part, once."""
    done = raw_dir / ".extracted"
    if done.exists() and (raw_dir / rsna.LABEL_FILE).exists():
        log.info("%s: already downloaded and extracted", raw_dir)
        return
    if not credentials_available():
        raise FedmlpError(f"Kaggle credentials not found: {CREDENTIALS_HELP}")
    try:
        api = _client()
    except ImportError:
        raise FedmlpError("the kaggle client is not installed: pip install kaggle") from None
    except (Exception, SystemExit) as exc:  # the client exits on bad credentials; never echo its message
        raise FedmlpError(f"Kaggle authentication failed ({type(exc).__name__}); check your credentials: {CREDENTIALS_HELP}") from None
    raw_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading the Kaggle competition %s (about 180 GB) into %s", config.competition, raw_dir)
    try:
        api.competition_download_files(config.competition, path=str(raw_dir), quiet=False)
    except Exception as exc:
        status = _status(exc)
        if status == 403:
            raise FedmlpError(
                f"Kaggle refused the download (HTTP 403): accept the rules of the competition with your account at "
                f"https://www.kaggle.com/competitions/{config.competition}/rules, then run again"
            ) from None
        if status == 401:
            raise FedmlpError(f"Kaggle rejected the credentials (HTTP 401): {CREDENTIALS_HELP}") from None
        raise FedmlpError(f"Kaggle download of {config.competition} failed ({type(exc).__name__}, HTTP {status})") from None
    archive = raw_dir / f"{config.competition}.zip"
    if not archive.exists():
        raise FedmlpError(f"{archive}: the Kaggle client finished but the archive is not there")
    try:
        zipfile.ZipFile(archive).close()
    except zipfile.BadZipFile:
        partial = archive.with_name(archive.name + ".partial")
        os.replace(archive, partial)
        raise FedmlpError(f"{archive}: incomplete download (no zip directory); moved aside to {partial.name}, run again") from None
    count = extract_zip(archive, raw_dir, keep=_is_train_member)
    done.write_text(f"{count}\n")
    log.info("%s: extracted %d training files", archive.name, count)
    if not config.keep_archives:
        archive.unlink()


SOURCE = Source(
    "ich", "downloaded", "RSNA ICH from Kaggle (the ich section)", "ich", IchConfig, classes=lambda config: list(rsna.CLASSES),
    ingest=rsna.ingest_as("ich"), layout=(rsna.LABEL_FILE, rsna.IMAGE_DIR), download=download,
)
