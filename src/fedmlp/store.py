"""The compact image store every training stage reads (docs/data.md).

A store is a directory with four files:

- ``images.npy``: uint8 array of shape (N, C, H, W), opened memory-mapped (for its shape) and read
  batch by batch with positioned reads (:meth:`ImageStore.read`), so that resident memory does not
  grow with N;
- ``labels.csv``: ``image_id`` plus one 0/1 column per class, row i describing image i;
- ``manifest.json``: dataset, windowing, size, classes, counts, skipped files and SHA-256 checksums;
- ``candidates.txt``: every image ingest tried, in source order (also those it had to skip).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmlp.errors import FedmlpError

IMAGES = "images.npy"
LABELS = "labels.csv"
MANIFEST = "manifest.json"
CANDIDATES = "candidates.txt"
FILES = (IMAGES, LABELS, MANIFEST, CANDIDATES)


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ImageStore:
    """A read-only view of a store: memory-mapped images, labels and the row of every image ID."""

    root: Path
    images: np.ndarray
    labels: np.ndarray  # (N, C) int8, the true labels: only partitions and evaluation may read them
    image_ids: list[str]
    classes: list[str]
    manifest: dict[str, Any]

    @classmethod
    def open(cls, root: Path) -> ImageStore:
        root = Path(root)
        for name in (IMAGES, LABELS, MANIFEST):
            if not (root / name).exists():
                raise FedmlpError(f"{root / name}: missing; is {root} an image store written by 'fedmlp ingest'?")
        try:
            manifest = json.loads((root / MANIFEST).read_text())
            classes = list(manifest["classes"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise FedmlpError(f"{root / MANIFEST}: not a store manifest ({type(exc).__name__}: {exc}); rerun 'fedmlp ingest'") from None
        try:
            images = np.load(root / IMAGES, mmap_mode="r")
        except (OSError, ValueError) as exc:  # truncated or not an .npy array
            raise FedmlpError(f"{root / IMAGES}: not a readable image array ({exc}); rerun 'fedmlp ingest'") from None
        table = pd.read_csv(root / LABELS, dtype={"image_id": str})
        if list(table.columns) != ["image_id", *classes] or len(table) != images.shape[0]:
            raise FedmlpError(f"{root / LABELS}: does not match {MANIFEST} (classes {classes}, {images.shape[0]} images)")
        return cls(
            root=root,
            images=images,
            labels=table[classes].to_numpy(dtype=np.int8),
            image_ids=table["image_id"].tolist(),
            classes=classes,
            manifest=manifest,
        )

    def rows(self, image_ids: list[str]) -> np.ndarray:
        """Store rows of ``image_ids``, in the given order."""
        index = pd.Index(self.image_ids)
        rows = index.get_indexer(image_ids)
        if (rows < 0).any():
            missing = image_ids[int(np.argmax(rows < 0))]
            raise FedmlpError(f"image {missing} is not in the store {self.root}")
        return rows

    def candidates(self) -> list[str]:
        """Every image ingest tried, in source order; the store's own IDs for stores without the file."""
        path = self.root / CANDIDATES
        return path.read_text().split() if path.exists() else list(self.image_ids)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The images of ``rows`` (any order), one positioned read per run of consecutive rows.

        Reading through the memory map would leave every page touched so far in this process's
        resident memory, which then grows with the store; reads go through the page cache instead,
        which caches just as well and is shared by every job reading the store."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        if len(rows) == 0:
            return out
        row_bytes = out[0].nbytes
        starts = np.flatnonzero(np.diff(rows, prepend=rows[0] - 2) != 1)  # first position of each run
        flat = out.reshape(len(rows), -1)
        with open(self.root / IMAGES, "rb", buffering=0) as handle:
            for begin, end in zip(starts, [*starts[1:], len(rows)]):
                view = memoryview(flat[begin:end]).cast("B")
                offset = self.images.offset + int(rows[begin]) * row_bytes
                if os.preadv(handle.fileno(), [view], offset) != len(view):
                    raise FedmlpError(f"{self.root / IMAGES}: shorter than its header says (row {rows[begin]}); rerun 'fedmlp ingest'")
        return out
