"""Your own data: a folder of images and a labels CSV (docs/custom-data.md).

``labels.csv`` has a column ``image`` (a path relative to ``custom.root``), one column per class holding
1, 0 or nothing, and optionally ``site``, ``split`` (train/val/test) and ``patient``. An empty cell
means "this site did not assess this class for this image": a site's classes that it leaves empty on
all its training images are its missing classes, which ``federation.partition: site`` hands to the
methods exactly as the other partitions hand out their unannotated classes.

The store keeps its format (0/1 labels): an empty cell is stored as 0 and the manifest's
``unassessed`` lists, per site, the classes it left empty, so that they are masked for training
(:func:`fedmlp.loader.observed_labels` keeps the annotated columns only) and refused to the methods and
diagnostics that would read them as true labels (:func:`check_assessed`).

Every problem with the table is one line naming the file, the line and the column, raised before
anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from fedmlp.config import PreprocessConfig
from fedmlp.dicom import MIN_SIDE, read_ct
from fedmlp.errors import FedmlpError, one_line
from fedmlp.ingest import Candidates, Decoded, file_kind, write_store
from fedmlp.schema import setting
from fedmlp.sources.registry import Source
from fedmlp.windowing import channels, resize, to_uint8, window

log = logging.getLogger(__name__)

IMAGE, SITE, SPLIT, PATIENT = "image", "site", "split", "patient"
META = (IMAGE, SITE, SPLIT, PATIENT)
SPLITS = ("train", "val", "test")
ONE_SITE = "all"  # the site of every image when the table has no site column
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
VALUES = ("1", "0", "")  # a class cell: present, absent, not assessed



@dataclass(frozen=True)
class CustomConfig:
    """Your own images and labels CSV (dataset custom, docs/custom-data.md)."""

    root: str | None = setting(None, "The folder holding your images (PNG, JPEG, TIFF, DICOM), any nesting; required with dataset custom.")
    labels: str | None = setting(None, "The labels CSV: a column image (path relative to root), one column per class with 1, 0 or empty, "
                                       "optionally site, split (train/val/test) and patient; required with dataset custom (docs/custom-data.md).")
    partial_blanks: Literal["error", "negative", "unlabelled"] = setting(
        "error", "Empty cells of a class that a site fills on some of its training images but not others. error: a one-line error with "
        "the counts; negative: they are 0; unlabelled: the site counts as not assessing that class at all. A class a site leaves empty on "
        "all its training images is always one of its missing classes.")


@dataclass(frozen=True)
class Table:
    """The parsed labels CSV: image IDs in file order, their 0/1 labels (empty cells as 0) and what
    the optional columns say, plus the classes each site left empty on its training images."""

    ids: list[str]
    labels: pd.DataFrame  # index image ID, one int column per class
    sites: dict[str, str] | None
    splits: dict[str, str] | None
    patients: dict[str, str] | None
    unassessed: dict[str, list[str]]  # site → the classes it did not assess (only sites that left some)


def read_header(path: Path) -> list[str]:
    """The columns of the labels CSV (cheap: Snakemake reads the classes from it when planning)."""
    kind = file_kind(path)
    if kind is not None:
        raise FedmlpError(f"config key 'custom.labels': {path} is {kind}, expected the labels CSV")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FedmlpError(f"{path}: not a readable CSV ({one_line(exc)})") from None
    header = [name.strip() for name in header]
    repeated = next((name for i, name in enumerate(header) if name in header[:i]), None)
    if repeated is not None:
        raise FedmlpError(f"{path}: line 1: column {repeated!r} appears twice")
    if IMAGE not in header:
        raise FedmlpError(f"{path}: line 1: no column 'image' (the image path relative to custom.root)")
    if "" in header:
        raise FedmlpError(f"{path}: line 1: column {header.index('') + 1} has no name")
    if not classes_of(header):
        raise FedmlpError(f"{path}: line 1: no class column (every column but {', '.join(META)} is a class)")
    return header


def classes_of(header: list[str]) -> list[str]:
    return [name for name in header if name not in META]


def read_classes(path: Path) -> list[str]:
    return classes_of(read_header(path))


def _image_id(value: str, where: str, root: Path) -> str:
    """The image path as the store's ID: relative, inside ``root``, without whitespace (the store's
    candidates.txt is whitespace-separated), and an existing regular file."""
    if not value:
        raise FedmlpError(f"{where}: empty image path")
    if any(ch.isspace() for ch in value):
        raise FedmlpError(f"{where}: {value!r} holds whitespace; rename the file (image IDs cannot hold spaces)")
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts:
        raise FedmlpError(f"{where}: {value!r} is not a path inside custom.root ({root})")
    if posix.suffix.lower() not in PILLOW_SUFFIXES + DICOM_SUFFIXES:
        raise FedmlpError(f"{where}: {value!r} is not a PNG, JPEG, TIFF or DICOM file name "
                          f"({', '.join(PILLOW_SUFFIXES + DICOM_SUFFIXES)})")
    kind = file_kind(root / posix)  # never opened here: a FIFO would block the reader
    if kind == "missing":
        raise FedmlpError(f"{where}: {value!r} not found under {root}")
    if kind is not None:
        raise FedmlpError(f"{where}: {value!r} is {kind}, not a regular file")
    return posix.as_posix()


def read_table(path: Path, root: Path, partial_blanks: str) -> Table:
    """Parse and check the labels CSV (see the module docstring); one line per problem."""
    header = read_header(path)
    classes = classes_of(header)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FedmlpError(f"{path}: not a readable CSV ({one_line(exc)})") from None
    frame.columns = header
    frame = frame.apply(lambda column: column.str.strip())
    if frame.empty:
        raise FedmlpError(f"{path}: no rows below the header")
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for row, value in enumerate(frame[IMAGE]):
        where = f"{path}: line {row + 2}, column 'image'"
        image_id = _image_id(value, where, root)
        if image_id in first_line:
            raise FedmlpError(f"{where}: {value!r} is listed again (first on line {first_line[image_id]})")
        first_line[image_id] = row + 2
        ids.append(image_id)
    for name in (SITE, SPLIT, PATIENT):
        if name in header and (frame[name] == "").any():
            row = int((frame[name] == "").to_numpy().argmax())
            raise FedmlpError(f"{path}: line {row + 2}, column {name!r}: empty (every row needs one when the column exists)")
    if SPLIT in header:
        bad = ~frame[SPLIT].isin(SPLITS)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise FedmlpError(f"{path}: line {row + 2}, column 'split': {frame[SPLIT].iloc[row]!r} is not one of {', '.join(SPLITS)}")
    cells = frame[classes].to_numpy()
    bad = ~np.isin(cells, VALUES)
    if bad.any():
        row, column = map(int, np.argwhere(bad)[0])
        raise FedmlpError(f"{path}: line {row + 2}, column {classes[column]!r}: {cells[row, column]!r} is not 1, 0 or empty")
    blank = cells == ""
    splits = frame[SPLIT].to_numpy() if SPLIT in header else None
    if blank.any():
        if splits is None:
            row, column = map(int, np.argwhere(blank)[0])
            raise FedmlpError(f"{path}: line {row + 2}, column {classes[column]!r}: empty, and the table has no 'split' column "
                              "(with empty cells, say which images are val and test: those must be fully labelled)")
        held_out = blank & (splits != "train")[:, None]
        if held_out.any():
            row, column = map(int, np.argwhere(held_out)[0])
            raise FedmlpError(f"{path}: line {row + 2}, column {classes[column]!r}: empty in a {splits[row]} row ({ids[row]}); "
                              "test and validation images must be fully labelled")
    if PATIENT in header and splits is not None:
        _check_patients(path, frame[PATIENT].tolist(), splits.tolist())
    sites = frame[SITE].to_numpy() if SITE in header else np.full(len(frame), ONE_SITE)
    values = np.where(blank, 0, cells == "1").astype(np.int8)
    train = splits == "train" if splits is not None else np.ones(len(frame), dtype=bool)
    unassessed = _resolve_blanks(path, classes, sites, train, blank, partial_blanks)
    return Table(
        ids=ids,
        labels=pd.DataFrame(values, index=pd.Index(ids, name="image_id"), columns=classes),
        sites=dict(zip(ids, sites.tolist())) if SITE in header else None,
        splits=dict(zip(ids, splits.tolist())) if splits is not None else None,
        patients=dict(zip(ids, frame[PATIENT])) if PATIENT in header else None,
        unassessed=unassessed,
    )


def _check_patients(path: Path, patients: list[str], splits: list[str]) -> None:
    """No patient in two splits of the split column (their images would leak into the test set)."""
    seen: dict[str, tuple[str, int]] = {}
    for row, (patient, split) in enumerate(zip(patients, splits)):
        first = seen.setdefault(patient, (split, row + 2))
        if first[0] != split:
            raise FedmlpError(f"{path}: line {row + 2}, column 'patient': patient {patient!r} is in {split} here and in "
                              f"{first[0]} on line {first[1]}; a patient's images must share one split")


def _resolve_blanks(path: Path, classes: list[str], sites: np.ndarray, train: np.ndarray, blank: np.ndarray,
                    partial_blanks: str) -> dict[str, list[str]]:
    """Per site, the classes it did not assess: empty on all its training images. A class a site
    leaves empty on some of them only is an error, unless ``custom.partial_blanks`` says what that means:
    ``negative`` (the empty cells are 0, the class assessed) or ``unlabelled`` (the site counts as not
    assessing the class at all; its filled cells are kept hidden like any missing class's labels)."""
    unassessed: dict[str, list[str]] = {}
    for site in dict.fromkeys(sites.tolist()):
        rows = np.flatnonzero((sites == site) & train)
        missing = []
        for c, name in enumerate(classes):
            empty = blank[rows, c]
            n_empty = int(empty.sum())
            if n_empty == 0:
                continue
            filled = len(rows) - n_empty
            if filled and partial_blanks == "error":
                first = int(rows[np.flatnonzero(empty)[0]]) + 2
                raise FedmlpError(
                    f"{path}: line {first}, column {name!r}: site {site!r} leaves {name!r} empty on {n_empty} of its {len(rows)} "
                    f"training images and fills it on {filled}; fill them, or set config key 'custom.partial_blanks' to "
                    "negative or unlabelled"
                )
            if not filled or partial_blanks == "unlabelled":
                missing.append(name)
        if missing:
            unassessed[str(site)] = missing
    return unassessed


def decode_image(path: Path, preprocess: PreprocessConfig) -> Decoded:
    """One image of any supported type as ``channels(preprocess.windowing)`` uint8 planes of
    ``preprocess.size`` pixels, or the reason it cannot be used (docs/custom-data.md, "Images")."""
    try:
        planes = _dicom(path, preprocess) if path.suffix.lower() in DICOM_SUFFIXES else _pillow(path, channels(preprocess.windowing))
    except FedmlpError as exc:
        return Decoded(None, str(exc))
    if min(planes.shape[1:]) < MIN_SIDE:
        return Decoded(None, f"{path}: {planes.shape[1]} × {planes.shape[2]} px is smaller than {MIN_SIDE} × {MIN_SIDE}; not a usable image")
    if planes.min() == planes.max():
        return Decoded(None, f"{path}: constant image (every pixel is {planes.min():g}): nothing to learn from")
    return Decoded(to_uint8(resize(planes, preprocess.size)))


def _scaled(array: np.ndarray) -> np.ndarray:
    """Min–max of this image to [0, 255] (16-bit, 32-bit and float images)."""
    low, high = float(array.min()), float(array.max())
    return np.zeros_like(array, dtype=np.float32) if high <= low else ((array - low) / (high - low) * 255.0).astype(np.float32)


def _pillow(path: Path, n_channels: int) -> np.ndarray:
    """PNG, JPEG, TIFF: 8-bit kept as is; 16-bit, 32-bit and float scaled by the image's own min and max;
    colour to luma (ITU-R 601-2, Pillow's ``L``) for one channel, grayscale repeated for three."""
    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) != 1:
                raise FedmlpError(f"{path}: {image.n_frames} frames, expected a single 2-D image")
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                gray = _scaled(np.asarray(image, dtype=np.float32))
                planes = np.stack([gray] * n_channels)
            elif n_channels == 1:
                planes = np.asarray(image.convert("L"), dtype=np.float32)[None]
            else:
                planes = np.moveaxis(np.asarray(image.convert("RGB"), dtype=np.float32), -1, 0)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # truncated, corrupt or hostile files
        raise FedmlpError(f"{path}: unreadable image ({type(exc).__name__}: {one_line(exc)})") from None
    return planes


def _dicom(path: Path, preprocess: PreprocessConfig) -> np.ndarray:
    """A DICOM slice windowed as the ICH path does (``preprocess.windowing``); with ``header`` and no
    window in the header, the image's own min and max (an X-ray has no Hounsfield window)."""
    image = read_ct(path)
    if preprocess.windowing == "header" and (image.window_center is None or image.window_width is None):
        planes = _scaled(image.hu)[None]
        return 255.0 - planes if image.monochrome1 else planes
    return window(image, preprocess.windowing, str(path))


def check_assessed(manifest: dict[str, Any], what: str) -> None:
    """Refuse ``what`` (a method reading the true labels of missing classes, a partition other than
    site) on a store whose missing classes have no true labels: their empty cells are stored as 0 and
    must never be read as negatives."""
    unassessed = manifest.get("unassessed") or {}
    if unassessed:
        site, names = next(iter(unassessed.items()))
        raise FedmlpError(f"{what}: the labels CSV leaves classes unassessed (site {site!r}: {', '.join(names)}), "
                          "whose empty cells are unknown, not negative; use federation.partition: site and a method that masks them")


def images_fingerprint(labels: Path, root: Path) -> str:
    """Path, size and modification time of every image the labels CSV lists: the ingest rule's param,
    so that a changed, added or replaced image reruns ingest (Snakemake tracks the CSV as an input).
    Only file metadata is read, never the images; a listed file that is missing counts as such."""
    try:
        listed = pd.read_csv(labels, dtype=str, keep_default_na=False, usecols=[IMAGE], encoding="utf-8-sig")[IMAGE]
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError):
        return "unreadable"  # ingest names the problem
    digest = hashlib.sha256()
    for name in listed:
        try:
            info = (root / name.strip()).stat()
            digest.update(f"{name.strip()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{name.strip()}\0missing\n".encode())
    return digest.hexdigest()[:16]


def check_settings(settings: dict[str, Any]) -> None:
    """The custom section as the workflow plans with it: root and labels set, root a directory."""
    for key in ("root", "labels"):
        if not settings.get(key):
            raise FedmlpError(f"config key 'custom.{key}': required with dataset custom (docs/custom-data.md)")
    if not Path(settings["root"]).is_dir():
        raise FedmlpError(f"config key 'custom.root': {settings['root']} is not a directory")


def candidates(config: CustomConfig) -> tuple[Candidates, Table]:
    root, labels = Path(config.root), Path(config.labels)
    if not root.is_dir():
        raise FedmlpError(f"config key 'custom.root': {root} is not a directory")
    table = read_table(labels, root, config.partial_blanks)
    facts: dict[str, Any] = {"labels_file": str(labels), "partial_blanks": config.partial_blanks, "unassessed": table.unassessed}
    for key, values in (("sites", table.sites), ("splits", table.splits), ("patients", table.patients)):
        if values is not None:
            facts[key] = values
    found = Candidates(ids=table.ids, paths=[root / i for i in table.ids], labels=table.labels, skipped=[], facts=facts)
    return found, table


def ingest_custom(config: CustomConfig, out_dir: Path, preprocess: PreprocessConfig, workers: int = 1,
                  report: Path | None = None) -> dict[str, Any]:
    found, table = candidates(config)
    log.info("%s: %d images, %d classes, sites %s", config.labels, len(table.ids), table.labels.shape[1],
             sorted(set(table.sites.values())) if table.sites else "(none)")
    return write_store(
        out_dir, found, partial(decode_image, preprocess=preprocess), channels(preprocess.windowing), preprocess.size,
        {"dataset": "custom", "windowing": preprocess.windowing}, workers, preprocess.max_skipped_fraction, report,
    )


def _ingest(raw: Path, out: Path, preprocess: PreprocessConfig, config: CustomConfig, workers: int, report: Path | None) -> dict[str, Any]:
    for key in ("root", "labels"):
        if getattr(config, key) is None:
            raise FedmlpError(f"config key 'custom.{key}': required with dataset custom (docs/custom-data.md)")
    return ingest_custom(config, out, preprocess, workers=workers, report=report)


SOURCE = Source(
    "custom", "user", "your own folder of images and labels CSV (the custom section, docs/custom-data.md)", "custom", CustomConfig,
    classes=lambda config: read_classes(Path(config.labels)), ingest=_ingest, ingest_reads_section=True, check=check_settings,
    raw=lambda settings: settings["root"], inputs=lambda settings: {"raw_labels": settings["labels"]},
    fingerprint=lambda settings: images_fingerprint(Path(settings["labels"]), Path(settings["root"])),
)
