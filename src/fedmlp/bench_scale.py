"""``fedmlp bench --scale N [N ...]``: what one training job costs as the store grows toward the paper's.

For each store size N (docs/performance.md, "Paper scale on the CPU"):

- a store of N random images (:func:`fedmlp.bench.write_random_store`: numpy writes, no DICOM),
  verified once as ``fedmlp verify`` does (:meth:`ImageStore.verify`, timed: the SHA-256 speed),
  split 70/30 and divided among 5 clients (iid, one annotated class each: all training images in use);
- the real ``fedmlp train`` command on it, in a subprocess: the seconds from its start to its first
  training batch on the device (its DEBUG line :data:`fedmlp.loader.FIRST_BATCH`, in Unix time), and
  its peak resident memory (``wait4``) over that start and ``train_seconds`` of training after it,
  when it is stopped with SIGTERM (a whole round at 224 px takes hours on a CPU);
- the loader's uint8 throughput: one shuffled epoch of batches over all N images moved to the device
  as uint8, no augmentation, no model (:func:`fedmlp.loader.batches`).

Each figure is then fitted linearly against N (``scipy.stats.linregress`` over the measured points)
and extrapolated to ``extrapolate_to`` images; the loader's as seconds per epoch, whose fit gives its
images/s there. Each store is deleted once measured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from fedmlp import bench
from fedmlp.config import FederationConfig, SplitConfig
from fedmlp.errors import FedmlpError
from fedmlp.loader import FIRST_BATCH, batches, make_client
from fedmlp.partition import partition, partition_artifact, random_split
from fedmlp.runtime import resolve
from fedmlp.store import IMAGES, ImageStore


@dataclass(frozen=True)
class ScaleSettings:
    sizes: tuple[int, ...]
    size: int = 224
    channels: int = 1  # as the ICH store (header windowing, the paper's)
    model: str = "resnet18"
    method: str = "fedmlp"
    precision: str = "auto"
    device: str = "auto"
    batch_size: int = 32
    threads: int | None = None  # None: the training job's default (train.threads, 1)
    train_seconds: float = 10.0  # how long the job trains after its first batch before it is stopped
    first_batch_timeout: float = 600.0
    extrapolate_to: int = 750_000
    seed: int = 0


@dataclass(frozen=True)
class ScalePoint:
    images: int
    store_gb: float
    verify_seconds: float  # fedmlp verify: SHA-256 of images.npy, candidates, the record
    sha256_gb_per_second: float
    first_batch_seconds: float  # the training job's start to its first batch on the device
    peak_rss_mb: float  # the training job's peak resident memory (until it was stopped)
    label_table_mb: float  # the store's labels and image IDs held by every job (grows with N by design)
    loader_images_per_second: float  # one epoch, uint8 to the device, no augmentation


@dataclass(frozen=True)
class ScaleResult:
    settings: dict
    command: list[str]  # the training command as run (paths of the last size)
    points: list[ScalePoint]
    method: str = "linear fit (scipy.stats.linregress) of each figure against the number of images; the loader's as seconds per epoch"
    extrapolated: dict[str, float | None] = field(default_factory=dict)  # at settings.extrapolate_to images (needs two sizes or more)

    def summary(self) -> str:
        head = f"{'images':>9} {'store GB':>8} {'first batch s':>13} {'peak RSS MB':>11} {'loader img/s':>12} {'verify s':>8} {'SHA-256 GB/s':>12}"
        lines = [head]
        for p in self.points:
            lines.append(f"{p.images:>9,} {p.store_gb:>8.2f} {p.first_batch_seconds:>13.2f} {p.peak_rss_mb:>11.0f} "
                         f"{p.loader_images_per_second:>12.0f} {p.verify_seconds:>8.2f} {p.sha256_gb_per_second:>12.2f}")
        if self.extrapolated:
            e = self.extrapolated
            lines.append(f"{self.settings['extrapolate_to']:>9,} {e['store_gb']:>8.2f} {e['first_batch_seconds']:>13.2f} "
                         f"{e['peak_rss_mb']:>11.0f} {e['loader_images_per_second'] or float('nan'):>12.0f} {e['verify_seconds']:>8.1f} "
                         f"{'':>12}  (extrapolated: {self.method})")
        return "\n".join(lines)


def fedmlp_command() -> list[str]:
    """The ``fedmlp`` console script of this interpreter's environment (``python -m fedmlp`` without one)."""
    script = Path(sys.executable).with_name("fedmlp")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fedmlp"]


def write_partition(store: ImageStore, path: Path, seed: int) -> None:
    """The default federation on the whole store: a 70/30 split, 5 iid clients with one annotated class each."""
    split = random_split(store.image_ids, SplitConfig(train_fraction=0.7, seed=seed))
    config = FederationConfig(n_clients=5, partition="iid", annotated_per_client=1, seed=seed)
    clients = partition(split.train, None, store.classes, config)
    path.write_text(json.dumps(partition_artifact(store.classes, clients, split.test, config)))


def training_job(settings: ScaleSettings, store: Path, partition_path: Path, out: Path) -> tuple[list[str], float, float]:
    """Run ``fedmlp train`` on ``store``: (its command, seconds from its start to its first training batch,
    its peak RSS in MB). The job is stopped ``train_seconds`` after its first batch (or ends by itself)."""
    train = {"batch_size": settings.batch_size, "precision": settings.precision, "device": settings.device,
             **({"threads": settings.threads} if settings.threads else {})}
    command = [*fedmlp_command(), "--log-level", "DEBUG", "train", "--store", str(store), "--partition", str(partition_path),
               "--method", settings.method, "--seed", str(settings.seed), "--train", json.dumps(train),
               "--model", json.dumps({"arch": settings.model}), "--out-model", str(out / "model.pt"), "--out-rounds", str(out / "rounds.csv")]
    lines: list[str] = []
    first_batch = threading.Event()

    start = time.time()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if FIRST_BATCH in line:
                first_batch.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def reaped(until: float, event: threading.Event | None = None) -> tuple[int, object] | None:
        """The job's exit status and resource usage (wait4: its own peak RSS) once it has ended by
        ``until`` (or ``event`` is set); None while it runs. Popen never reaps it, so wait4 can."""
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                return status, usage
            if time.monotonic() >= until or (event is not None and event.is_set()):
                return None
            time.sleep(0.05)

    ended = reaped(time.monotonic() + settings.first_batch_timeout, first_batch)
    if ended is None and first_batch.is_set():
        ended = reaped(time.monotonic() + settings.train_seconds)
    if ended is None:
        process.send_signal(signal.SIGTERM if first_batch.is_set() else signal.SIGKILL)  # SIGTERM: fedmlp's clean interruption
        _, status, usage = os.wait4(process.pid, 0)
    else:
        status, usage = ended
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(10)
    marks = [line for line in lines if FIRST_BATCH in line]
    if not marks:
        tail = "".join(lines[-5:]).strip().replace("\n", " | ")
        raise FedmlpError(f"the training job on {store} reached no first batch (exit {process.returncode}): {tail}")
    seconds = float(marks[0].rsplit(maxsplit=1)[1]) - start
    return command, seconds, usage.ru_maxrss / 1024  # ru_maxrss: kB on Linux


def loader_images_per_second(store: ImageStore, settings: ScaleSettings) -> float:
    """One shuffled epoch over every image of the store, uint8 batches moved to the device, no augmentation."""
    runtime = resolve(settings.device, "fp32", settings.threads)
    client = make_client(store, 0, store.image_ids, store.classes[:1])
    start = time.perf_counter()
    seen = 0
    for batch in batches(store, client, settings.batch_size, torch.Generator().manual_seed(settings.seed), runtime.device):
        seen += batch.images.shape[0]
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def measure(settings: ScaleSettings, n_images: int, work: Path) -> tuple[list[str], ScalePoint]:
    root = work / f"store{n_images}"
    root.mkdir()
    try:
        bench.write_random_store(root, n_images, settings.channels, settings.size, settings.seed)
        gigabytes = (root / IMAGES).stat().st_size / 1e9
        start = time.perf_counter()
        ImageStore.open(root).verify()  # what 'fedmlp verify' does, once per store
        verify_seconds = time.perf_counter() - start
        store = ImageStore.open(root)
        write_partition(store, work / "partition.json", settings.seed)
        out = work / "out"
        out.mkdir(exist_ok=True)
        command, first_batch, rss = training_job(settings, root, work / "partition.json", out)
        labels_mb = (store.labels.nbytes + sum(sys.getsizeof(i) for i in store.image_ids)) / 2**20
        loader = loader_images_per_second(store, settings)
    finally:
        for path in root.iterdir():
            path.unlink()
        root.rmdir()
    return command, ScalePoint(images=n_images, store_gb=round(gigabytes, 3), verify_seconds=round(verify_seconds, 4),
                               sha256_gb_per_second=round(gigabytes / verify_seconds, 4), first_batch_seconds=round(first_batch, 3),
                               peak_rss_mb=round(rss, 1), label_table_mb=round(labels_mb, 4), loader_images_per_second=round(loader, 1))


def extrapolate(points: list[ScalePoint], n: int) -> dict[str, float | None]:
    """Each figure at ``n`` images by a linear fit of the measured points against their number of images."""
    if len({p.images for p in points}) < 2:
        return {}
    x = np.array([p.images for p in points], dtype=float)

    def at_n(values: list[float]) -> float:
        fit = stats.linregress(x, values)
        return float(fit.intercept + fit.slope * n)

    epoch_seconds = at_n([p.images / p.loader_images_per_second for p in points])
    return {
        "store_gb": round(at_n([p.store_gb for p in points]), 2),
        "verify_seconds": round(at_n([p.verify_seconds for p in points]), 1),
        "first_batch_seconds": round(at_n([p.first_batch_seconds for p in points]), 2),
        "peak_rss_mb": round(at_n([p.peak_rss_mb for p in points]), 0),
        "label_table_mb": round(at_n([p.label_table_mb for p in points]), 1),
        "loader_images_per_second": round(n / epoch_seconds, 0) if epoch_seconds > 0 else None,  # a fit of noise can fall below 0
    }


def run(settings: ScaleSettings) -> ScaleResult:
    if min(settings.sizes) < 20:
        raise FedmlpError(f"--scale {min(settings.sizes)}: expected at least 20 images per store (5 clients and a test set)")
    points, command = [], []
    with tempfile.TemporaryDirectory(prefix="fedmlp-bench-scale-") as tmp:
        for n in sorted(settings.sizes):
            command, point = measure(settings, n, Path(tmp))
            points.append(point)
    return ScaleResult(settings=asdict(settings), command=command, points=points, extrapolated=extrapolate(points, settings.extrapolate_to))


def write_json(result: ScaleResult, path: Path) -> None:
    from fedmlp.atomic import write_text

    write_text(path, json.dumps({**asdict(result), "hostname": os.uname().nodename, "cpu_count": os.cpu_count(),
                                 "cpu": bench._cpu_name(), "torch_version": torch.__version__}, indent=2) + "\n")
