"""Client datasets and batches, gathered from the memory-mapped store.

A batch is one read of sorted rows from the store (no per-sample Python), moved to the training
device as uint8; augmentation then runs on the whole batch (:mod:`fedmlp.augment`). On a GPU the next
batch is read and copied in a background thread while the current one trains (:func:`prefetched`);
on the CPU there is no copy to hide, and the thread only contends for the GIL (:func:`ahead_on`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from fedmlp.store import ImageStore, ImageView

T = TypeVar("T")
log = logging.getLogger(__name__)
FIRST_BATCH = "first training batch ready at Unix time"  # `fedmlp bench --scale` times a job's start-up by this DEBUG line
_first_batch_seen = False


@dataclass(frozen=True)
class ClientData:
    """What a client may see: its images and the labels of the classes it annotates.

    ``observed`` holds the true label for annotated classes and 0 for missing ones (how the paper's
    setting stores them); ``annotated`` says which is which. The hidden labels are not here.
    """

    client_id: int
    rows: np.ndarray  # store rows, sorted
    observed: torch.Tensor  # (N, C) float32
    annotated: torch.Tensor  # (C,) bool

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def missing(self) -> torch.Tensor:
        return ~self.annotated


@dataclass(frozen=True)
class Batch:
    positions: torch.Tensor  # positions within the client's data, for per-sample client state
    images: torch.Tensor  # uint8 (B, C, H, W) on the device
    observed: torch.Tensor  # (B, C) float32 on the device
    annotated: torch.Tensor  # (C,) bool on the device


def observed_labels(store: ImageStore, rows: np.ndarray, annotated: np.ndarray) -> torch.Tensor:
    """The only place the clients' labels are read from the store, before training: missing classes come
    out as 0. (The exception is a diagnostic that asks for its clients' true labels,
    :meth:`fedmlp.methods.base.Method.reads_hidden_labels`: the loop's :class:`fedmlp.federated.Site` reads them.)"""
    labels = store.labels[rows].astype(np.float32) * annotated[None, :].astype(np.float32)
    return torch.from_numpy(labels)


def make_client(store: ImageStore, client_id: int, image_ids: list[str], annotated_classes: list[str]) -> ClientData:
    rows = np.sort(store.rows(image_ids))
    annotated = np.array([c in annotated_classes for c in store.classes])
    return ClientData(client_id, rows, observed_labels(store, rows, annotated), torch.from_numpy(annotated))


def read_images(store: ImageView, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 images of ``rows``, on ``device`` (through pinned memory for a GPU)."""
    images = torch.from_numpy(store.read(rows))
    if device.type == "cuda":
        images = images.pin_memory()
    return images.to(device, non_blocking=True)


def ahead_on(device: torch.device, items: Iterator[T]) -> Iterator[T]:
    """``items`` prefetched on a GPU, as they come on the CPU. On the CPU a batch is a few small
    reads of the page cache, and the prefetching thread's Python work wakes up while the training
    step runs, whose many small tensor calls then wait for the GIL: measured on the default (compact
    CNN, 32 px, fp32, one thread), a training job took 8-15 % longer with the thread than without."""
    return prefetched(items) if device.type == "cuda" else items


def prefetched(items: Iterator[T]) -> Iterator[T]:
    """``items``, each produced in a background thread while the caller works on the previous one.

    Reading a batch (a system call, and a host-to-device copy on a GPU) releases the GIL, so it
    overlaps with the training step. Items are still produced one at a time, in order."""
    done = object()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedmlp-prefetch") as pool:
        pending = pool.submit(next, items, done)
        while (item := pending.result()) is not done:
            pending = pool.submit(next, items, done)
            yield item


def batches(store: ImageView, client: ClientData, batch_size: int, generator: torch.Generator, device: torch.device) -> Iterator[Batch]:
    """One shuffled epoch (prefetched on a GPU: :func:`ahead_on`). A trailing batch of one image is dropped (BatchNorm
    needs two). The order is drawn here, before the first batch, so the random stream does not
    depend on when the prefetching thread runs."""
    order = torch.randperm(len(client), generator=generator)
    annotated = client.annotated.to(device)

    def produce() -> Iterator[Batch]:
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size].sort().values
            if len(positions) < 2:
                break
            batch = Batch(
                positions=positions,
                images=read_images(store, client.rows[positions.numpy()], device),
                observed=client.observed[positions].to(device),
                annotated=annotated,
            )
            note_first_batch()
            yield batch

    return ahead_on(device, produce())


def note_first_batch() -> None:
    """Log (DEBUG) when this process's first training batch is on the device, in Unix time: the
    time from a job's start to its first batch, which ``fedmlp bench --scale`` reads from the real
    ``fedmlp train`` command (docs/performance.md, "Paper scale on the CPU")."""
    global _first_batch_seen
    if not _first_batch_seen:
        _first_batch_seen = True
        log.debug("%s %.6f", FIRST_BATCH, time.time())


def n_batches(n_images: int, batch_size: int) -> int:
    full, rest = divmod(n_images, batch_size)
    return full + (rest >= 2)


def iterate_rows(store: ImageView, rows: np.ndarray, batch_size: int, device: torch.device) -> Iterator[tuple[slice, torch.Tensor]]:
    """Sequential batches over ``rows`` (prefetched on a GPU), for evaluation and feature passes."""
    chunks = (slice(start, min(start + batch_size, len(rows))) for start in range(0, len(rows), batch_size))
    return ahead_on(device, ((chunk, read_images(store, rows[chunk], device)) for chunk in chunks))
