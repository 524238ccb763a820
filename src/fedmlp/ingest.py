"""Raw dataset → image store: decode, window, resize, write (DESIGN §4.1, §6).

Files that cannot be used are skipped and listed (log and manifest), never silently dropped.
The store is built in a temporary directory and renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fedmlp import store as store_files
from fedmlp.atomic import atomic_dir, write_json
from fedmlp.config import PreprocessConfig
from fedmlp.dicom import read_ct
from fedmlp.errors import FedmlpError
from fedmlp.progress import bar
from fedmlp.sources import rsna
from fedmlp.windowing import channels, resize, to_uint8, window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decoded:
    image: np.ndarray | None  # (C, size, size) uint8, or None when the file was skipped
    reason: str = ""
    repaired: bool = False


def decode_dicom(path: Path, preprocess: PreprocessConfig) -> Decoded:
    try:
        ct = read_ct(path)
        image = to_uint8(resize(window(ct, preprocess.windowing, str(path)), preprocess.size))
    except FedmlpError as exc:
        return Decoded(None, str(exc))
    return Decoded(image, repaired=ct.repaired)


def _decode_all(paths: list[Path], preprocess: PreprocessConfig, workers: int) -> Iterator[Decoded]:
    decode = partial(decode_dicom, preprocess=preprocess)
    if workers <= 1:
        yield from map(decode, paths)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(decode, paths, chunksize=32)


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


def _prepare_target(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / store_files.MANIFEST).exists():
        raise FedmlpError(f"{out_dir}: exists and is not an image store; refusing to overwrite it")


def ingest_ich(raw_dir: Path, out_dir: Path, preprocess: PreprocessConfig, dataset: str, workers: int = 1) -> dict[str, Any]:
    """Build a store from the Kaggle RSNA layout (also what the synthetic source writes)."""
    label_path = raw_dir / rsna.LABEL_FILE
    image_dir = raw_dir / rsna.IMAGE_DIR
    if not label_path.exists():
        raise FedmlpError(f"{label_path}: label file not found (expected the Kaggle layout: {rsna.LABEL_FILE} + {rsna.IMAGE_DIR}/)")
    if not image_dir.is_dir():
        raise FedmlpError(f"{image_dir}: image directory not found")
    _prepare_target(out_dir)
    parsed = rsna.read_labels(label_path)
    if parsed.duplicate_rows:
        log.info("%s: %d duplicate rows (%d images listed more than once); identical duplicates are merged",
                 label_path, parsed.duplicate_rows, len(parsed.duplicated_images))
    on_disk = {name[:-4] for name in os.listdir(image_dir) if name.endswith(".dcm")}
    labelled = parsed.table.index
    ids = sorted(set(labelled) & on_disk)
    labels_without_image = sorted(set(labelled) - on_disk)
    images_without_labels = sorted(on_disk - set(labelled))
    skipped = [{"image_id": i, "reason": "no rows in the label file"} for i in images_without_labels]
    if labels_without_image:
        log.warning("%d labelled images have no file in %s (first: %s)", len(labels_without_image), image_dir, labels_without_image[0])
    if not ids:
        raise FedmlpError(f"{raw_dir}: no image has both a file in {rsna.IMAGE_DIR}/ and rows in {rsna.LABEL_FILE}")

    n_channels, size = channels(preprocess.windowing), preprocess.size
    kept: list[str] = []
    repaired = 0
    with atomic_dir(out_dir) as tmp:
        images = np.lib.format.open_memmap(tmp / store_files.IMAGES, mode="w+", dtype=np.uint8, shape=(len(ids), n_channels, size, size))
        paths = [rsna.image_path(raw_dir, i) for i in ids]
        results = _decode_all(paths, preprocess, workers)
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
        if not kept:
            raise FedmlpError(f"{raw_dir}: none of the {len(ids)} images could be read (first problem: {skipped[-1]['reason']})")
        if len(kept) < len(ids):
            _shrink_npy(tmp / store_files.IMAGES, len(kept))
        classes = list(rsna.CLASSES)
        table = parsed.table.loc[kept, classes].reset_index()
        table.to_csv(tmp / store_files.LABELS, index=False)
        manifest = {
            "format": 1,
            "dataset": dataset,
            "windowing": preprocess.windowing,
            "size": size,
            "channels": n_channels,
            "classes": classes,
            "n_images": len(kept),
            "positives": {c: int(table[c].sum()) for c in classes},
            "skipped": skipped,
            "labelled_without_image": len(labels_without_image),
            "duplicate_label_rows": parsed.duplicate_rows,
            "duplicated_images": parsed.duplicated_images,
            "repaired_signed_as_unsigned": repaired,
            "sha256": {name: store_files.sha256(tmp / name) for name in (store_files.IMAGES, store_files.LABELS)},
        }
        write_json(tmp / store_files.MANIFEST, manifest)
    log.info("store %s: %d images (%d skipped, %d repaired signed-as-unsigned), positives %s",
             out_dir, len(kept), len(skipped), repaired, manifest["positives"])
    return manifest

