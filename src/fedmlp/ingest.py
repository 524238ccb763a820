"""Raw dataset → image store: decode, window, resize, write (docs/data.md).

Files that cannot be used are skipped and listed (log, manifest and a report CSV), never silently
dropped; when they are more than ``preprocess.max_skipped_fraction`` of all image files, the stage
fails instead (a missing decoder or a wrong directory, not a few corrupt files). The store is built
in a temporary directory and renamed into place only when complete.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmlp import store as store_files
from fedmlp.atomic import atomic_dir, atomic_path, exclusive, require_free_space, write_json
from fedmlp.config import PreprocessConfig
from fedmlp.dicom import read_ct
from fedmlp.errors import FedmlpError
from fedmlp.progress import bar
from fedmlp.windowing import resize, to_uint8, window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray | None  # (C, size, size) uint8, or None when the file was skipped
    reason: str = ""
    repaired: bool = False


def decode_dicom(path: Path, preprocess: PreprocessConfig) -> Decoded:
    """One head-CT slice, or the reason it cannot be used (another modality, a blank slice, ...)."""
    try:
        ct = read_ct(path)
        if ct.modality not in (None, "CT"):
            raise FedmlpError(f"{path}: Modality {ct.modality!r}, expected CT")
        low, high = float(ct.hu.min()), float(ct.hu.max())
        if low == high:
            raise FedmlpError(f"{path}: constant image (every pixel is {low:g} HU): a blank slice, nothing to learn from")
        windowed = window(ct, preprocess.windowing, str(path))
        if windowed.min() == windowed.max():
            raise FedmlpError(f"{path}: constant after '{preprocess.windowing}' windowing (HU {low:g} to {high:g}, header window "
                              f"{ct.window_center}/{ct.window_width}): it would be a blank store row")
        image = to_uint8(resize(windowed, preprocess.size))
    except FedmlpError as exc:
        return Decoded(None, str(exc))
    return Decoded(image, repaired=ct.repaired)


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent handles it


def _decode_all(paths: list[Path], decode: Callable[[Path], Decoded], workers: int) -> Iterator[Decoded]:
    if workers <= 1:
        yield from map(decode, paths)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_ignore_interrupts) as pool:
        try:
            yield from pool.map(decode, paths, chunksize=32)
        finally:  # interrupted or failed: do not decode the rest before stopping
            pool.shutdown(cancel_futures=True)


def _shrink_npy(path: Path, n_rows: int) -> None:
    """Cut an .npy file to its first ``n_rows`` rows in place (rewrites the header, truncates the data).

    Avoids copying a store of hundreds of GB because a few files were unreadable. The header keeps
    its length (padded with spaces, as the format allows), so the data offset does not move.
    """
    fmt = np.lib.format
    with open(path, "r+b") as handle:
        version = fmt.read_magic(handle)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        data_offset = handle.tell()
        header = {"descr": fmt.dtype_to_descr(dtype), "fortran_order": fortran, "shape": (n_rows, *shape[1:])}
        text = repr(header).encode("latin1")
        prefix = len(fmt.magic(*version)) + (2 if version == (1, 0) else 4)
        room = data_offset - prefix - 1
        if len(text) > room:
            raise RuntimeError("npy header cannot shrink in place")  # cannot happen: fewer rows, same dtype
        handle.seek(prefix)
        handle.write(text + b" " * (room - len(text)) + b"\n")
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        handle.truncate(data_offset + n_rows * row_bytes)


def _reserve(path: Path, store: Path) -> None:
    """Allocate the image array's blocks now, so that a full disk is a clear error before any
    decoding instead of a crash (SIGBUS) while writing through the memory map. (The free-space check
    before it, :func:`fedmlp.atomic.require_free_space`, cannot promise the space: others write too.)"""
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            os.posix_fallocate(handle.fileno(), 0, size)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise FedmlpError(f"{store}: no space left on device (the image array needs {size / 2**20:.1f} MiB)") from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # file systems without fallocate
                raise


def write_report(path: Path, entries: list[dict[str, str]]) -> None:
    """What ingest left out and why, one row per image: ``image_id,reason``; kept when ingest fails."""
    with atomic_path(path, now=True) as tmp:
        pd.DataFrame(entries, columns=["image_id", "reason"]).to_csv(tmp, index=False)


def default_report(out_dir: Path) -> Path:
    """Beside the store, not in it: the report must survive a failed ingest, which leaves no store."""
    return out_dir.with_name(out_dir.name + ".skipped.csv")


def _prepare_target(out_dir: Path) -> None:
    """Replace only what is ours: nothing, an empty directory, or a store that 'fedmlp ingest' wrote
    (its marker file, which Snakemake leaves when it removes the declared outputs for a rerun, or a
    store manifest) holding nothing but store files. Never decided by file names alone."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise FedmlpError(f"{out_dir}: exists and is not a directory; refusing to replace it")
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return
    if not store_files.is_ours(out_dir):
        raise FedmlpError(f"{out_dir}: exists and is not an image store written by 'fedmlp ingest' (it holds {entries[0]!r}); "
                          "refusing to overwrite it")
    foreign = [name for name in entries if name not in (*store_files.FILES, store_files.MARKER, store_files.VERIFIED)]
    if foreign:
        raise FedmlpError(f"{out_dir}: exists and holds {foreign[0]!r}, which is not part of an image store; refusing to overwrite it")


@dataclass(frozen=True)
class Candidates:
    """What a source hands the store writer: images to decode, in source order, with their labels."""

    ids: list[str]
    paths: list[Path]
    labels: pd.DataFrame  # index image_id, one 0/1 column per class
    skipped: list[dict[str, str]]  # problems found before decoding (e.g. an image without labels)
    facts: dict[str, Any]  # source-specific counts for the manifest
    unmatched: list[dict[str, str]] = field(default_factory=list)  # labels without an image: reported, not counted


def write_store(
    out_dir: Path, candidates: Candidates, decode: Callable[[Path], Decoded], n_channels: int, size: int,
    manifest: dict[str, Any], workers: int = 1, max_skipped_fraction: float = 1.0, report: Path | None = None,
) -> dict[str, Any]:
    """Decode every candidate into a new store at ``out_dir`` (built aside, renamed into place).

    Unreadable images are skipped and listed (``report``, default :func:`default_report`); the image
    array is shrunk in place to the readable ones. ``candidates.txt`` keeps every candidate ID in
    source order, so that a split defined on the source (the paper's) stays exact even when an image
    cannot be read."""
    with exclusive(out_dir):  # held to the end, the report included: a second ingest into out_dir fails at once
        return _write_store(out_dir, candidates, decode, n_channels, size, manifest, workers, max_skipped_fraction, report)


def _write_store(out_dir: Path, candidates: Candidates, decode: Callable[[Path], Decoded], n_channels: int, size: int,
                 manifest: dict[str, Any], workers: int, max_skipped_fraction: float, report: Path | None) -> dict[str, Any]:
    _prepare_target(out_dir)
    report = default_report(out_dir) if report is None else report
    ids = candidates.ids
    if not ids:
        write_report(report, candidates.skipped + candidates.unmatched)
        first = (candidates.skipped + candidates.unmatched or [{"reason": "no images and no labels"}])[0]["reason"]
        raise FedmlpError(f"no image has both a file and labels (first problem: {first}; all in {report})")
    skipped = list(candidates.skipped)
    kept: list[str] = []
    repaired = 0
    require_free_space(out_dir, "config key 'preprocess.size'", f"{len(ids):,} images of {n_channels} × {size} × {size} px in the image array",
                       size=len(ids) * n_channels * size * size, advice="lower it, free some space, or write the store elsewhere")
    with atomic_dir(out_dir) as tmp:
        images = np.lib.format.open_memmap(tmp / store_files.IMAGES, mode="w+", dtype=np.uint8, shape=(len(ids), n_channels, size, size))
        _reserve(tmp / store_files.IMAGES, out_dir)
        results = _decode_all(candidates.paths, decode, workers)
        for image_id, decoded in zip(ids, bar(results, total=len(ids), desc="ingest", unit="img")):
            if decoded.image is None:
                skipped.append({"image_id": image_id, "reason": decoded.reason})
                log.warning("skipped %s", decoded.reason)
                continue
            images[len(kept)] = decoded.image
            kept.append(image_id)
            repaired += decoded.repaired
        images.flush()
        del images
        write_report(report, skipped + candidates.unmatched)
        if not kept:
            raise FedmlpError(f"none of the {len(ids)} images could be read (first problem: {skipped[-1]['reason']}; all in {report})")
        files = len(ids) + len(candidates.skipped)
        if len(skipped) > max_skipped_fraction * files:
            raise FedmlpError(
                f"{len(skipped)} of {files} image files ({len(skipped) / files:.1%}) cannot be used, more than config key "
                f"'preprocess.max_skipped_fraction' allows ({max_skipped_fraction:g}); reasons in {report} (first: {skipped[0]['reason']})"
            )
        if len(kept) < len(ids):
            _shrink_npy(tmp / store_files.IMAGES, len(kept))
        classes = list(candidates.labels.columns)
        table = candidates.labels.loc[kept, classes].rename_axis("image_id").reset_index()
        table.to_csv(tmp / store_files.LABELS, index=False)
        (tmp / store_files.CANDIDATES).write_text("\n".join(ids) + "\n")
        (tmp / store_files.MARKER).write_text(store_files.MARKER_TEXT)
        manifest = {
            "format": 1,
            **manifest,
            "size": size,
            "channels": n_channels,
            "classes": classes,
            "n_images": len(kept),
            "positives": {c: int(table[c].sum()) for c in classes},
            "skipped": skipped,
            "repaired_signed_as_unsigned": repaired,
            **candidates.facts,
            "sha256": {name: store_files.sha256(tmp / name) for name in (store_files.IMAGES, store_files.LABELS, store_files.CANDIDATES)},
        }
        write_json(tmp / store_files.MANIFEST, manifest)
    log.info("store %s: %d images (%d skipped, %d repaired signed-as-unsigned), positives %s",
             out_dir, len(kept), len(skipped), repaired, manifest["positives"])
    return manifest


SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
           (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))


def file_kind(path: Path) -> str | None:
    """None for a regular file (or a link to one); otherwise what it is. Never opens it: opening a
    FIFO waits for a writer, reading a device may never end."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    except OSError as exc:
        return f"not accessible ({os.strerror(exc.errno).lower() if exc.errno else exc})"
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in SPECIAL if test(mode)), "not a regular file")


def list_images(image_dir: Path, suffix: str) -> tuple[list[str], list[dict[str, str]]]:
    """Names of the regular ``*suffix`` files in ``image_dir``, and the other entries so named, each
    skipped with its reason (a FIFO, a socket, a directory ...)."""
    regular, special = [], []
    for name in sorted(os.listdir(image_dir)):
        if not name.endswith(suffix):
            continue
        kind = file_kind(image_dir / name)
        if kind is None:
            regular.append(name)
        else:
            special.append({"image_id": name[: -len(suffix)] if suffix == ".dcm" else name,
                            "reason": f"{image_dir / name}: {kind}, not a regular file; skipped without opening it"})
    return regular, special


def require_layout(raw_dir: Path, label_file: str, image_dir: str, hint: str) -> tuple[Path, Path]:
    """The label file and image directory of a raw layout, or an error naming the missing one."""
    labels, images = raw_dir / label_file, raw_dir / image_dir
    kind = file_kind(labels)
    if kind not in (None, "missing"):
        raise FedmlpError(f"{labels}: {kind}, not a regular file; refusing to read it as the label file")
    if not labels.is_file():
        raise FedmlpError(f"{labels}: label file not found ({hint}: {label_file} + {image_dir}/)")
    if not images.is_dir():
        raise FedmlpError(f"{images}: image directory not found ({hint}: {label_file} + {image_dir}/)")
    return labels, images
