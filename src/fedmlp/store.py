"""The compact image store every training stage reads (docs/data.md).

A store is a directory with four files:

- ``images.npy``: uint8 array of shape (N, C, H, W), opened memory-mapped (for its shape) and read
  batch by batch with positioned reads (:meth:`ImageStore.read`), so that resident memory does not
  grow with N;
- ``labels.csv``: ``image_id`` plus one 0/1 column per class, row i describing image i;
- ``manifest.json``: dataset, windowing, size, classes, counts, skipped files and SHA-256 checksums;
- ``candidates.txt``: every image ingest tried, in source order (also those it had to skip).

Opening a store checks what is cheap to check (:meth:`ImageStore.open`). The SHA-256 of the images
(a read of the whole file: 38 GB for RSNA ICH at 224 px) is checked in full once, by ``fedmlp verify``
or by the first job that reads the store, which record what they verified in ``.verified.json``: the
file's size, modification and change times, inode and device. Later jobs compare only that identity
(:meth:`ImageStore.check_verified`) and refuse a store changed in place since (docs/performance.md,
"Verifying a store once"). Ingest writes no record: Snakemake touches every output of a job after it
ends, which changes the times of ``images.npy`` as an edit would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedmlp.atomic import write_json
from fedmlp.errors import FedmlpError, one_line, printable

log = logging.getLogger(__name__)

IMAGES = "images.npy"
LABELS = "labels.csv"
MANIFEST = "manifest.json"
CANDIDATES = "candidates.txt"
FILES = (IMAGES, LABELS, MANIFEST, CANDIDATES)
MARKER = ".fedmlp-store"  # written by ingest, not a declared output: it survives Snakemake's cleanup before a rerun
MARKER_TEXT = "An image store written by 'fedmlp ingest'; 'fedmlp ingest' may replace this directory.\n"
VERIFIED = ".verified.json"  # what the last full verification of images.npy saw (not a declared output; .dvcignore'd)


def is_ours(root: Path) -> bool:
    """Whether ``root`` holds a store (or what Snakemake left of one) that 'fedmlp ingest' wrote: its
    marker, or a manifest in the store format (stores written before the marker existed)."""
    if (root / MARKER).is_file():
        return True
    if not (root / MANIFEST).is_file():  # never open a FIFO or a device
        return False
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == 1 and isinstance(manifest.get("sha256"), dict)


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class FileIdentity:
    """What changes when a file's content is changed through the file system, read by one ``stat``:
    a write changes the modification and change times, a copy or a restore the inode; putting the
    modification time back (``touch -d``, ``os.utime``) changes the change time, which no user can set."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def verified_sha256(path: Path) -> tuple[str, FileIdentity]:
    """The SHA-256 of ``path`` and the identity of the file it was computed from (unchanged while read)."""
    before = FileIdentity.of(path)
    digest = sha256(path)
    if FileIdentity.of(path) != before:
        raise FedmlpError(f"{path}: changed while its SHA-256 was computed; stop what writes it and verify again")
    return digest, before


def write_verified(root: Path, images_sha256: str | None, identity: FileIdentity) -> None:
    """Record that ``images.npy`` of the store ``root`` was verified in full, as ``identity`` (atomically)."""
    write_json(root / VERIFIED, {"format": 1, "images_sha256": images_sha256, "images": dataclasses.asdict(identity)}, now=True)


def read_verified(root: Path) -> dict[str, Any] | None:
    """The verification record of a store, or None where there is none (or none that parses)."""
    path = root / VERIFIED
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        record["images"] = FileIdentity(**record["images"])
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return record


def verify_command(root: Path) -> str:
    return f"fedmlp verify {shlex.quote(str(root))}"


def _rerun(path: Path, problem: str) -> FedmlpError:
    return FedmlpError(f"{path}: {problem}; rerun 'fedmlp ingest'")


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, with the fields every reader relies on checked."""
    try:
        manifest = json.loads(path.read_text())
        classes = manifest["classes"]
        shape = [manifest[key] for key in ("n_images", "channels", "size")]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise FedmlpError(f"{path}: not a store manifest ({type(exc).__name__}: {one_line(exc)}); rerun 'fedmlp ingest'") from None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes) and len(set(classes)) == len(classes)):
        raise _rerun(path, f"not a store manifest (classes {classes!r}: expected distinct names)")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise _rerun(path, f"not a store manifest (n_images, channels, size {shape}: expected positive integers)")
    if not isinstance(manifest.get("sha256", {}), dict):
        raise _rerun(path, "not a store manifest (sha256 is not a mapping)")
    return manifest


def check_images(path: Path, images: np.ndarray, manifest: dict[str, Any]) -> None:
    """dtype, shape and size of the image array against the manifest (the header only; the size of
    the data was checked by the memory map)."""
    if images.dtype != np.uint8:
        raise _rerun(path, f"holds {images.dtype} values, expected uint8 as 'fedmlp ingest' writes them")
    expected = (manifest["n_images"], manifest["channels"], manifest["size"], manifest["size"])
    if images.shape != expected or manifest["channels"] not in (1, 3):
        raise _rerun(path, f"shape {images.shape} does not match {MANIFEST} ({' × '.join(map(str, expected))})")
    if images.dtype.hasobject or np.isfortran(images):
        raise _rerun(path, "not a C-ordered uint8 array")


def check_checksum(path: Path, data: bytes, manifest: dict[str, Any]) -> None:
    """``data`` (the bytes of ``path``) against the SHA-256 the manifest records for it, if any."""
    expected = manifest.get("sha256", {}).get(path.name)
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise _rerun(path, f"SHA-256 differs from the one {MANIFEST} records: the file was changed after ingest")


def read_labels(path: Path, data: bytes, classes: list[str], n_images: int) -> tuple[list[str], np.ndarray]:
    """Image IDs and the 0/1 label matrix of ``labels.csv``, row i describing image i."""
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _rerun(path, f"not a label table ({type(exc).__name__}: {one_line(exc)})") from None
    if list(table.columns) != ["image_id", *classes] or len(table) != n_images:
        raise FedmlpError(f"{path}: does not match {MANIFEST} (classes {classes}, {n_images} images)")
    values = table[classes].to_numpy()
    bad = ~np.isin(values, ["0", "1"])
    if bad.any():
        row, column = map(int, np.argwhere(bad)[0])
        raise _rerun(path, f"line {row + 2}: label {values[row, column]!r} for {classes[column]} is not 0 or 1")
    ids = table["image_id"]
    if (ids == "").any() or ids.duplicated().any():
        row = int((ids.duplicated() | (ids == "")).to_numpy().argmax())
        raise _rerun(path, f"line {row + 2}: image ID {ids.iloc[row]!r} is empty or listed twice")
    return ids.tolist(), (values == "1").astype(np.int8)


@dataclass(frozen=True)
class ImageView:
    """What a client's side of a method may read of a store: the images, their IDs and the class
    names, and nothing that holds a label (:class:`ImageStore` adds those). A method's
    :class:`~fedmlp.methods.base.LocalContext` holds one of these, built by :meth:`ImageStore.view`,
    so that the true labels of missing classes and of the validation and test images cannot reach
    training code through it; a client's own labels come with its
    :class:`~fedmlp.loader.ClientData` (``observed``: 0 on missing classes)."""

    images_path: Path  # images.npy (read by :meth:`read`)
    images: np.ndarray  # (N, C, H, W) uint8, memory-mapped: its shape and dtype (read batches with :meth:`read`)
    image_ids: list[str]
    classes: list[str]

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
        with open(self.images_path, "rb", buffering=0) as handle:
            for begin, end in zip(starts, [*starts[1:], len(rows)]):
                view = memoryview(flat[begin:end]).cast("B")
                offset = self.images.offset + int(rows[begin]) * row_bytes
                if os.preadv(handle.fileno(), [view], offset) != len(view):
                    raise FedmlpError(f"{self.images_path}: shorter than its header says (row {rows[begin]}); rerun 'fedmlp ingest'")
        return out


@dataclass(frozen=True)
class ImageStore(ImageView):
    """A read-only view of a store: memory-mapped images, labels and the row of every image ID. Only the
    server's side (partitions, evaluation, diagnostics) holds one; clients get :meth:`view`."""

    root: Path
    labels: np.ndarray  # (N, C) int8, the true labels: only partitions, evaluation and diagnostics may read them
    manifest: dict[str, Any]

    def view(self) -> ImageView:
        """The label-free part, for a client's side (a new object: nothing in it leads back here)."""
        return ImageView(images_path=self.images_path, images=self.images, image_ids=self.image_ids, classes=self.classes)

    @classmethod
    def open(cls, root: Path, require_verified: bool = False) -> ImageStore:
        """Open a store after the cheap checks: the manifest's fields, the image array's dtype and shape
        against them, every label 0 or 1, unique image IDs, and the SHA-256 of ``labels.csv`` (read
        anyway). With ``require_verified`` also the identity of ``images.npy`` against the record of its
        last full verification (:meth:`check_verified`: the training and evaluation commands; the full
        check is :meth:`verify`, ``fedmlp verify``). docs/performance.md has the costs."""
        root = Path(root)
        for name in (IMAGES, LABELS, MANIFEST):
            if not (root / name).exists():
                raise FedmlpError(f"{root / name}: missing; is {root} an image store written by 'fedmlp ingest'?")
            if not (root / name).is_file():
                raise FedmlpError(f"{root / name}: not a regular file; is {root} an image store written by 'fedmlp ingest'?")
        manifest = read_manifest(root / MANIFEST)
        classes = list(manifest["classes"])
        try:
            images = np.load(root / IMAGES, mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:  # truncated or not an .npy array
            raise FedmlpError(f"{root / IMAGES}: not a readable image array ({one_line(exc)}); rerun 'fedmlp ingest'") from None
        check_images(root / IMAGES, images, manifest)
        labels_bytes = (root / LABELS).read_bytes()
        check_checksum(root / LABELS, labels_bytes, manifest)
        image_ids, labels = read_labels(root / LABELS, labels_bytes, classes, images.shape[0])
        store = cls(images_path=root / IMAGES, images=images, image_ids=image_ids, classes=classes, root=root, labels=labels,
                    manifest=manifest)
        if require_verified:
            store.check_verified()
        return store

    def verify_images(self) -> FileIdentity:
        """The SHA-256 of ``images.npy`` against the manifest's (when it records one); the identity of
        the file verified."""
        expected = self.manifest.get("sha256", {}).get(IMAGES)
        digest, identity = verified_sha256(self.root / IMAGES)
        if expected is not None and digest != expected:
            raise FedmlpError(f"{self.root / IMAGES}: SHA-256 differs from the one {MANIFEST} records: the images were changed "
                              "after ingest; rerun 'fedmlp ingest'")
        return identity

    def verify(self) -> FileIdentity:
        """Verify the whole store (images and candidates against the manifest's SHA-256, on top of what
        :meth:`open` checks) and record the identity of the images verified (``fedmlp verify``)."""
        identity = self.verify_images()
        self.candidates()
        write_verified(self.root, self.manifest.get("sha256", {}).get(IMAGES), identity)
        return identity

    def check_verified(self) -> None:
        """The cheap check of ``images.npy`` before a job reads it: its identity against the record of
        its last full verification. The verified file changed in place since (size, modification or
        change time) is refused, naming the command that verifies it again. A file the record does not
        describe (no record: a store written before records existed; another inode or device: a copy,
        a ``dvc pull``) has never been verified: it is verified in full here, and the record written
        where the store is writable, so that the next job checks only the identity."""
        now = FileIdentity.of(self.root / IMAGES)
        record = read_verified(self.root)
        if record is None or (record["images"].inode, record["images"].device) != (now.inode, now.device):
            log.info("%s: images.npy not verified on this file yet; verifying it (a read of the whole file)", self.root)
            identity = self.verify_images()
            try:
                write_verified(self.root, self.manifest.get("sha256", {}).get(IMAGES), identity)
            except (OSError, FedmlpError) as exc:  # a read-only store, or another job writing the record right now
                log.info("%s: verification not recorded (%s)", self.root, one_line(exc))
            return
        changed = [name for name in ("size", "mtime_ns", "ctime_ns") if getattr(now, name) != getattr(record["images"], name)]
        if record.get("images_sha256") != self.manifest.get("sha256", {}).get(IMAGES):
            changed.insert(0, f"the SHA-256 in {MANIFEST}")
        if changed:
            raise FedmlpError(f"{self.root / IMAGES}: changed since it was last verified in full ({', '.join(changed)} differ from "
                              f"{VERIFIED}); run '{verify_command(self.root)}' (it reads the whole file)")

    def rows(self, image_ids: list[str]) -> np.ndarray:
        """Store rows of ``image_ids``, in the given order."""
        index = pd.Index(self.image_ids)
        rows = index.get_indexer(image_ids)
        if (rows < 0).any():
            missing = image_ids[int(np.argmax(rows < 0))]
            raise FedmlpError(f"image {printable(missing)} is not in the store {self.root}")
        return rows

    def candidates(self) -> list[str]:
        """Every image ingest tried, in source order; the store's own IDs for stores without the file."""
        path = self.root / CANDIDATES
        if not path.exists():
            return list(self.image_ids)
        data = path.read_bytes()
        check_checksum(path, data, self.manifest)
        ids = data.decode("utf-8", errors="replace").split()
        if len(set(ids)) != len(ids) or not set(self.image_ids) <= set(ids):
            raise FedmlpError(f"{path}: does not list every stored image exactly once; rerun 'fedmlp ingest'")
        return ids
