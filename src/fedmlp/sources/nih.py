"""NIH ChestX-ray14: the 12 image archives, the label file, the official split lists (docs/data.md).

Layout after download and extraction (``raw`` directory)::

    images/00000001_000.png ...          from images_001.tar.gz … images_012.tar.gz
    Data_Entry_2017_v2020.csv            the label file
    train_val_list.txt  test_list.txt    the official patient-level split
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fedmlp.archives import extract_tar
from fedmlp.config import PreprocessConfig
from fedmlp.dicom import MIN_SIDE
from fedmlp.download import check_url, fetch
from fedmlp.errors import FedmlpError, one_line
from fedmlp.ingest import Candidates, Decoded, list_images, require_layout, write_store
from fedmlp.schema import setting
from fedmlp.sources.registry import Source
from fedmlp.windowing import resize, to_uint8

log = logging.getLogger(__name__)

IMAGE_DIR = "images"
LABEL_FILE = "Data_Entry_2017_v2020.csv"
SPLIT_FILES = ("train_val_list.txt", "test_list.txt")
NO_FINDING = "No Finding"
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
# The paper used 8 of the 14 classes without saying which; the default is the original ChestX-ray8 eight.
CHESTXRAY8 = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax")
HOMEPAGE = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
URL = {"type": "string", "pattern": "^https?://[^/]"}


@dataclass(frozen=True)
class ChestXray14Config:
    """NIH ChestX-ray14 (dataset chestxray14); root points at an existing download instead."""

    root: str | None = setting(None, "An existing download (images/, Data_Entry_2017_v2020.csv, train_val_list.txt, test_list.txt); "
                                     "null downloads into resources/chestxray14/raw.")
    classes: list[str] = setting(
        list(CHESTXRAY8), "The classes to use, in order. The paper used 8 of the 14 without naming them; the default is the original ChestX-ray8 eight.",
        schema={"type": "array", "items": {"type": "string", "enum": list(FINDINGS)}, "minItems": 1, "uniqueItems": True},
    )
    archive_base_url: str = setting("https://nihcc.box.com/shared/static", "Where the 12 image archives are (NIH's static links; a mirror works too).",
                                    schema=URL)
    metadata_base_url: str | None = setting(None, "Where the label file and split lists are; null: put them into the raw directory by hand "
                                                  "(they have no static links).", schema={**URL, "type": ["string", "null"]})
    keep_archives: bool = setting(False, "Keep the 12 archives after extraction (45 GB).")


@dataclass(frozen=True)
class Archive:
    name: str
    remote: str  # file name under the archive base URL (NIH's static links, batch_download_zips.py)
    md5: str  # NIH FAQ, Q07


ARCHIVES = tuple(
    Archive(f"images_{i:03d}.tar.gz", f"{token}.gz", md5)
    for i, (token, md5) in enumerate(
        [
            ("vfk49d74nhbxq3nqjg0900w5nvkorp5c", "fe8ed0a6961412fddcbb3603c11b3698"),
            ("i28rlmbvmfjbl8p2n3ril0pptcmcu9d1", "ab07a2d7cbe6f65ddd97b4ed7bde10bf"),
            ("f1t00wrtdk94satdfb9olcolqx20z2jp", "2301d03bde4c246388bad3876965d574"),
            ("0aowwzs5lhjrceb3qp67ahp0rd1l1etg", "9f1b7f5aae01b13f4bc8e2c44a4b8ef6"),
            ("v5e3goj22zr6h8tzualxfsqlqaygfbsn", "1861f3cd0ef7734df8104f2b0309023b"),
            ("asi7ikud9jwnkrnkj99jnpfkjdes7l6l", "456b53a8b351afd92a35bc41444c58c8"),
            ("jn1b4mw4n6lnh74ovmcjb8y48h8xj07n", "1075121ea20a137b87f290d6a4a5965e"),
            ("tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j", "b61f34cec3aa69f295fbb593cbd9d443"),
            ("upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj", "442a3caa61ae9b64e61c561294d1e183"),
            ("l6nilvfa9cg3s28tqv1qc1olm3gnz54p", "09ec81c4c31e32858ad8cf965c494b74"),
            ("hhq8fkdgvcari67vfhs7ppg2w6ni4jze", "499aefc67207a5a97692424cf5dbeed5"),
            ("ioqwiy20ihqwyr8pf4c24eazhh281pbu", "dc9fda1757c2de0032b63347a7d2895c"),
        ],
        start=1,
    )
)


def read_data_entry(path: Path) -> pd.DataFrame:
    """The label file (``.csv`` or ``.csv.gz``), with ``Patient Gender`` renamed ``Patient Sex``.

    The bracketed headers (``OriginalImage[Width,Height]``) hold unquoted commas; they split into two
    columns, as the data rows do, and are not used here. The index is the line number in the file,
    so that later checks can name the line."""
    try:
        frame = pd.read_csv(path, dtype={"Image Index": str, "Finding Labels": str, "View Position": str})
    except pd.errors.EmptyDataError:
        raise FedmlpError(f"{path}: empty file (expected the header of Data_Entry_2017_v2020.csv and one row per image)") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FedmlpError(f"{path}: cannot read the label file ({one_line(exc)})") from None
    frame = frame.rename(columns={"Patient Gender": "Patient Sex"})
    missing = [c for c in ("Image Index", "Finding Labels", "View Position", "Patient ID") if c not in frame.columns]
    if missing:
        raise FedmlpError(f"{path}:1: missing column(s) {', '.join(missing)} (is it Data_Entry_2017_v2020.csv?)")
    if frame.empty:
        raise FedmlpError(f"{path}: no rows after the header")
    frame.index = pd.RangeIndex(2, len(frame) + 2, name="line")
    repeated = frame["Image Index"].duplicated()
    if repeated.any():
        name = frame.loc[repeated, "Image Index"].iloc[0]
        lines = frame.index[frame["Image Index"] == name].tolist()
        raise FedmlpError(f"{path}:{lines[1]}: image {name!r} is listed again (first on line {lines[0]})")
    return frame


def multi_hot(frame: pd.DataFrame, classes: list[str], path: Path | str = "label file") -> pd.DataFrame:
    """``image_id`` plus one 0/1 column per class from the ``|``-separated ``Finding Labels``."""
    unknown = [c for c in classes if c not in FINDINGS]
    if unknown:
        raise FedmlpError(f"config key 'chestxray14.classes': unknown class {unknown[0]!r} (one of {', '.join(FINDINGS)})")
    def line(position: int) -> int:
        return int(frame.index[position]) if frame.index.name == "line" else position + 2

    empty = frame["Finding Labels"].fillna("").str.strip() == ""
    if empty.any():
        raise FedmlpError(f"{path}:{line(int(empty.to_numpy().argmax()))}: empty 'Finding Labels' (expected findings joined by '|', or '{NO_FINDING}')")
    findings = frame["Finding Labels"].str.split("|")
    seen = set(findings.explode()) - {NO_FINDING}
    strange = sorted(seen - set(FINDINGS))
    if strange:
        position = int(findings.map(lambda f: strange[0] in f).to_numpy().argmax())
        raise FedmlpError(f"{path}:{line(position)}: unknown finding {strange[0]!r} (expected one of {', '.join(FINDINGS)}, or '{NO_FINDING}')")
    table = pd.DataFrame({"image_id": frame["Image Index"].to_numpy()})
    for name in classes:
        table[name] = findings.map(lambda f, n=name: int(n in f)).astype("int8").to_numpy()
    return table


def pa_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Posterior-anterior views, in file order (the paper's split depends on that order)."""
    return frame[frame["View Position"] == "PA"]


def patients(frame: pd.DataFrame) -> dict[str, str]:
    """Image → patient, from the label file: the validation set of the official split is drawn by patient."""
    return dict(zip(frame["Image Index"], frame["Patient ID"].astype(str)))


def read_list(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise FedmlpError(f"{path}: cannot read the split list ({exc})") from None


def download(raw_dir: Path, config: ChestXray14Config) -> None:
    """Fetch, verify and extract the 12 archives, then fetch the label file and split lists.

    Each archive is checked against NIH's MD5 before extraction; an extracted archive is remembered
    (``.extracted/NAME``) and not fetched again, and is deleted unless ``keep_archives``. The label file
    and lists have no static links: they come from ``metadata_base_url`` when set, else they must
    be placed in ``raw_dir`` by hand (the error says so)."""
    for key in ("archive_base_url", "metadata_base_url"):
        check_url(getattr(config, key), f"chestxray14.{key}")
    done_dir = raw_dir / ".extracted"
    for archive in ARCHIVES:
        if (done_dir / archive.name).exists():
            continue
        path = fetch(f"{config.archive_base_url.rstrip('/')}/{archive.remote}", raw_dir / "archives" / archive.name, archive.md5)
        count = extract_tar(path, raw_dir)
        done_dir.mkdir(parents=True, exist_ok=True)
        (done_dir / archive.name).write_text(f"{count}\n")
        log.info("%s: extracted %d files", archive.name, count)
        if not config.keep_archives:
            path.unlink()
    for name in (LABEL_FILE, *SPLIT_FILES):
        if (raw_dir / name).exists():
            continue
        if config.metadata_base_url is None:
            raise FedmlpError(
                f"{raw_dir / name}: not found; download {name} from {HOMEPAGE} into {raw_dir}, "
                "or set config key 'chestxray14.metadata_base_url' to a server that has it"
            )
        fetch(f"{config.metadata_base_url.rstrip('/')}/{name}", raw_dir / name)


def decode_png(path: Path, size: int) -> Decoded:
    """A radiograph as one uint8 channel: RGBA/RGB/LA converted to grayscale, 16-bit scaled to 8."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(image, dtype=np.float32)
                array = array / 257.0 if array.max() > 255 else array
            else:
                array = np.asarray(image.convert("L"), dtype=np.float32)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # truncated, corrupt or hostile files
        return Decoded(None, f"{path}: unreadable image ({type(exc).__name__}: {exc})")
    if min(array.shape) < MIN_SIDE:
        return Decoded(None, f"{path}: {array.shape[0]} × {array.shape[1]} px is smaller than {MIN_SIDE} × {MIN_SIDE}; not a usable image")
    return Decoded(to_uint8(resize(array[None], size)))


def chestxray14_candidates(raw_dir: Path, classes: list[str]) -> Candidates:
    """PA views of the label file, in file order, with their images under ``images/``."""
    label_path, image_dir = require_layout(raw_dir, LABEL_FILE, IMAGE_DIR, f"see {HOMEPAGE}")
    frame = read_data_entry(label_path)
    pa = pa_rows(frame)
    labels = multi_hot(pa, classes, label_path).set_index("image_id")
    regular, special = list_images(image_dir, ".png")
    on_disk = set(regular)
    present = [i for i in labels.index if i in on_disk]
    unusable = {entry["image_id"] for entry in special}
    absent = [i for i in labels.index if i not in on_disk and i not in unusable]
    if absent:
        log.warning("%d of %d PA images listed in %s have no file in %s", len(absent), len(labels), label_path, image_dir)
    unlabelled = sorted(on_disk - set(frame["Image Index"]))
    return Candidates(
        ids=present,
        paths=[image_dir / i for i in present],
        labels=labels,
        skipped=special + [{"image_id": i, "reason": f"{image_dir / i}: no row in the label file {label_path}"} for i in unlabelled],
        facts={"pa_rows": len(pa), "labelled_without_image": len(absent), "views_left_out": int(len(frame) - len(pa))},
        unmatched=[{"image_id": i, "reason": f"listed in {label_path} but no file in {image_dir}"} for i in absent],
    )


def ingest_chestxray14(raw_dir: Path, out_dir: Path, preprocess: PreprocessConfig, classes: list[str], workers: int = 1,
                       report: Path | None = None) -> dict[str, Any]:
    return write_store(
        out_dir, chestxray14_candidates(raw_dir, classes), partial(decode_png, size=preprocess.size), 1, preprocess.size,
        {"dataset": "chestxray14", "windowing": "none (PNG grayscale)"}, workers, preprocess.max_skipped_fraction, report,
    )


def _ingest(raw: Path, out: Path, preprocess: PreprocessConfig, config: ChestXray14Config, workers: int, report: Path | None) -> dict:
    return ingest_chestxray14(raw, out, preprocess, config.classes, workers=workers, report=report)


SOURCE = Source(
    "chestxray14", "downloaded", "NIH ChestX-ray14 (the chestxray14 section)", "chestxray14", ChestXray14Config,
    classes=lambda config: list(config.classes), ingest=_ingest, ingest_reads_section=True, layout=(LABEL_FILE, IMAGE_DIR),
    fixed_prep="png", official_split=True, download=download,
)
