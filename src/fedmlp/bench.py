"""``fedmlp bench``: throughput of the data path and of one FedMLP local round, on one client.

Stages (what a client does in one round, on ``--images`` images):

- ``loader``: read the batches of one shuffled epoch from the store and augment two views of each,
  on the training device; no model. The data path alone.
- ``1``: a stage-1 (warm-up) local update: two augmented views in one forward, the frozen teacher's
  forward for the distillation term, backward and Adam step.
- ``2``: a stage-2 round: one pass over the client's images for features, learning degrees and local
  prototypes, the missing-label detection, then the local update with pseudo-labels and the teacher.
  The global prototypes the other clients would contribute are random (detection costs the same).

Without ``--store``, a store of random images is written to a temporary directory (with plain file
writes, so generating it does not count in the peak resident memory). Each stage is timed after
a few untimed warm-up batches (kernel selection, allocator growth).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fedmlp import store as store_files
from fedmlp.augment import random_affine
from fedmlp.config import AugmentConfig, ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.loader import ClientData, make_client
from fedmlp.methods.base import LocalContext
from fedmlp.methods.fedmlp import FedMLP, make
from fedmlp.models import build_model
from fedmlp.optim import adam
from fedmlp.runtime import Runtime, resolve
from fedmlp.store import ImageStore

log = logging.getLogger(__name__)

Stage = Literal["loader", "1", "2"]
N_CLASSES = 5  # as RSNA ICH without `any`; the benched client annotates the first one
PREVALENCE = 0.15


@dataclass(frozen=True)
class BenchSettings:
    stage: Stage
    size: int = 224
    images: int = 256
    model: Literal["resnet18", "compact-cnn"] = "resnet18"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = 32
    channels: int = 3
    threads: int | None = None  # None: torch's default (all cores)
    store: Path | None = None
    warmup_batches: int = 2
    repeats: int = 3  # the stage (and its bound) is timed this many times; the fastest counts
    seed: int = 0


@dataclass(frozen=True)
class BenchResult:
    stage: str
    images: int
    size: int
    channels: int
    model: str
    batch_size: int
    device: str
    device_name: str
    precision: str
    threads: int
    store: str
    seconds: float
    images_per_second: float
    peak_rss_mb: float  # the whole process's peak (VmHWM), setup included
    gpu_peak_memory_mb: float | None
    torch_version: str
    # The machine's own limit for this stage: a plain forward + backward (and a plain inference
    # forward) of the same model on the same batch shape, timed in the same run, scaled by the
    # stage's operation count (operations()). None for the loader, which runs no model.
    bound_images_per_second: float | None = None
    fraction_of_bound: float | None = None
    # The arithmetic's limit: the stage's FLOPs per image (counted by torch.utils.flop_counter on a
    # forward + backward and an inference forward, scaled by operations()) against the peak FLOP/s
    # of the cores (a large matrix product in the same precision and threads). Per-operation
    # overhead, memory traffic and unfavourable shapes are all inside the gap to this bound.
    flops_per_image: float | None = None
    peak_flops: float | None = None
    arithmetic_bound_images_per_second: float | None = None
    fraction_of_arithmetic_bound: float | None = None

    def summary(self) -> str:
        gpu = f", GPU peak {self.gpu_peak_memory_mb:.0f} MB" if self.gpu_peak_memory_mb is not None else ""
        bound = (f"; {self.fraction_of_bound:.2f} of the bound {self.bound_images_per_second:.1f} images/s"
                 if self.bound_images_per_second is not None else "")
        if self.arithmetic_bound_images_per_second is not None:
            bound += (f"; {self.fraction_of_arithmetic_bound:.3f} of the arithmetic bound {self.arithmetic_bound_images_per_second:.1f} "
                      f"images/s ({self.flops_per_image / 1e9:.3g} GFLOP per image at {self.peak_flops / 1e9:.1f} GFLOP/s)")
        return (f"stage {self.stage}: {self.images_per_second:.1f} images/s ({self.images} images at {self.size} px in "
                f"{self.seconds:.2f} s; {self.model}, batch {self.batch_size}, {self.device} {self.precision}, "
                f"{self.threads} threads){bound}; peak RSS {self.peak_rss_mb:.0f} MB{gpu}")


def write_random_store(root: Path, n_images: int, channels: int, size: int, seed: int) -> None:
    """A store of smooth random images with random labels, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    shape = (n_images, channels, size, size)
    with open(root / store_files.IMAGES, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|u1", "fortran_order": False, "shape": shape})
        for start in range(0, n_images, 256):
            n = min(256, n_images - start)
            coarse = rng.integers(0, 256, (n, channels, -(-size // 8), -(-size // 8)), dtype=np.uint8)
            handle.write(np.ascontiguousarray(coarse.repeat(8, axis=2).repeat(8, axis=3)[:, :, :size, :size]).tobytes())
    classes = [f"class{c}" for c in range(N_CLASSES)]
    labels = pd.DataFrame((rng.random((n_images, N_CLASSES)) < PREVALENCE).astype(int), columns=classes)
    labels.insert(0, "image_id", [f"bench{i:07d}" for i in range(n_images)])
    labels.to_csv(root / store_files.LABELS, index=False)
    manifest = {"dataset": "bench", "classes": classes, "n_images": n_images, "size": size, "channels": channels}
    (root / store_files.MANIFEST).write_text(json.dumps(manifest))


@contextmanager
def open_store(settings: BenchSettings) -> Iterator[ImageStore]:
    if settings.store is not None:
        yield ImageStore.open(settings.store)
        return
    from fedmlp.atomic import require_free_space

    # at the largest options (1,000,000 images of 3 × 1024 × 1024 px) about 3 TB: refused at once, not once the disk is full
    require_free_space(Path(tempfile.gettempdir()), "--images", f"{settings.images:,} images of {settings.channels} × {settings.size} "
                       f"× {settings.size} px (--channels, --size) in the temporary store",
                       size=settings.images * settings.channels * settings.size * settings.size,
                       advice="lower them, free some space, point TMPDIR elsewhere, or bench an existing store with --store")
    with tempfile.TemporaryDirectory(prefix="fedmlp-bench-") as tmp:
        write_random_store(Path(tmp), settings.images, settings.channels, settings.size, settings.seed)
        yield ImageStore.open(Path(tmp))


def bench_client(store: ImageStore, n_images: int) -> ClientData:
    if n_images > len(store.image_ids):
        raise FedmlpError(f"--images {n_images}: the store {store.root} holds only {len(store.image_ids)} images")
    return make_client(store, 0, store.image_ids[:n_images], store.classes[:1])


def _context(method: FedMLP, round_index: int, client: ClientData, store: ImageStore, runtime: Runtime,
             train: TrainConfig, model_config: ModelConfig, seed: int, payload: dict | None = None) -> LocalContext:
    torch.manual_seed(seed)
    model = build_model(model_config, len(store.classes)).to(runtime.device, memory_format=torch.channels_last)
    teacher = build_model(model_config, len(store.classes)).to(runtime.device, memory_format=torch.channels_last)
    teacher.load_state_dict(model.state_dict())
    return LocalContext(
        round=round_index, total_rounds=method.n_rounds(train), client=client, model=model,
        teacher=teacher.eval().requires_grad_(False), scratch=copy.deepcopy(teacher).eval().requires_grad_(False),
        state=method.init_client_state(client), store=store, runtime=runtime, train=train,
        generator=torch.Generator().manual_seed(seed), payload=payload or {},
    )


def loader_round(method: FedMLP, ctx: LocalContext) -> None:
    for batch in ctx.batches():
        views = torch.cat([random_affine(batch.images, ctx.train.augment, ctx.generator) for _ in range(2)])
        views.sum().item()  # wait for the device


def stage1_round(method: FedMLP, ctx: LocalContext) -> None:
    method.local_update(ctx)


def stage2_round(method: FedMLP, ctx: LocalContext) -> None:
    method.client_prepare(ctx)  # the pass: features, learning degrees, local prototypes
    method.local_update(ctx)  # detection (before_training), then the local update


ROUNDS: dict[str, Callable[[FedMLP, LocalContext], None]] = {"loader": loader_round, "1": stage1_round, "2": stage2_round}


def operations(stage: str, views: int) -> tuple[int, int]:
    """Per image of a stage: (forward + backward passes, inference forwards). Stage 1: the student on
    its views, the frozen teacher on the same views. Stage 2: the same (``fedmlp.stage2_views`` views)
    plus the client's pass over its images (one inference forward per image, no augmentation)."""
    return (views, views) if stage == "1" else (views, views + 1)


def plain_seconds_per_image(model_config: ModelConfig, n_classes: int, images: torch.Tensor, runtime: Runtime,
                            batches: int) -> tuple[float, float]:
    """Seconds per image of a plain forward + backward + Adam step, and of an inference forward, on
    a fixed float batch (no data path, no augmentation, no method): what the hardware allows."""
    model = build_model(model_config, n_classes).to(runtime.device, memory_format=torch.channels_last).train()
    optimizer = adam(model.parameters(), lr=1e-3)  # as Method.local_update
    targets = torch.zeros(images.shape[0], n_classes, device=runtime.device)

    def train_step() -> None:
        with runtime.autocast():
            loss = F.binary_cross_entropy_with_logits(model(images).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def forward() -> None:
        with runtime.autocast():
            model(images)

    timings = []
    for step in (train_step, forward):
        step()  # untimed: kernel selection, allocator growth
        _synchronize(runtime)
        start = time.perf_counter()
        for _ in range(batches):
            step()
        _synchronize(runtime)
        timings.append((time.perf_counter() - start) / (batches * images.shape[0]))
    return timings[0], timings[1]


def bound_images_per_second(stage: str, views: int, train_seconds: float, forward_seconds: float) -> float:
    backward_passes, forwards = operations(stage, views)
    return 1.0 / (backward_passes * train_seconds + forwards * forward_seconds)


def step_flops_per_image(model_config: ModelConfig, n_classes: int, shape: tuple[int, ...]) -> tuple[float, float]:
    """FLOPs per image of a forward + backward (with the loss) and of an inference forward, on a
    batch of ``shape`` (B, C, H, W), counted by ``torch.utils.flop_counter`` on the meta device:
    shapes only, nothing is computed. Counts the matrix products and convolutions (their
    multiply-adds as two FLOPs each); elementwise work is left out, as it is of any peak FLOP/s."""
    model = build_model(model_config, n_classes).to("meta", memory_format=torch.channels_last).train()
    images = torch.empty(shape, device="meta")
    with FlopCounterMode(display=False) as train_count:
        F.binary_cross_entropy_with_logits(model(images).float(), torch.zeros(shape[0], n_classes, device="meta")).backward()
    with FlopCounterMode(display=False) as forward_count, torch.inference_mode():
        model(images)
    return train_count.get_total_flops() / shape[0], forward_count.get_total_flops() / shape[0]


def stage_flops_per_image(stage: str, views: int, train_flops: float, forward_flops: float) -> float:
    backward_passes, forwards = operations(stage, views)
    return backward_passes * train_flops + forwards * forward_flops


def measured_peak_flops(runtime: Runtime, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an ``n`` × ``n`` matrix product in the run's precision (bf16 or fp32) and threads,
    the fastest of ``repeats`` after one untimed: about the most the cores compute."""
    dtype = torch.bfloat16 if runtime.precision == "bf16" else torch.float32
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(runtime.device, dtype) for _ in range(2))
    torch.mm(a, b)
    _synchronize(runtime)
    fastest = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        _synchronize(runtime)
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * n**3 / fastest


def _synchronize(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()


def run(settings: BenchSettings) -> BenchResult:
    if settings.images < 2 * settings.batch_size:
        raise FedmlpError(f"--images {settings.images}: expected at least two batches ({2 * settings.batch_size})")
    runtime = resolve(settings.device, settings.precision, settings.threads)
    train = TrainConfig(batch_size=settings.batch_size, augment=AugmentConfig())
    model_config = ModelConfig(arch=settings.model)
    method = make("fedmlp", {})
    with open_store(settings) as store:
        if store.images.shape[2] != settings.size and settings.store is not None:
            log.info("the store's images are %d px; --size is ignored", store.images.shape[2])
        client = bench_client(store, settings.images)
        stage2 = settings.stage == "2"
        round_index = method.first_stage2_round if stage2 else 0
        payload = None
        if stage2:  # what the server would broadcast: random global prototypes (detection costs the same)
            dim = build_model(model_config, len(store.classes)).head.in_features
            payload = {"prototypes": torch.randn(len(store.classes), 2, dim, generator=torch.Generator().manual_seed(settings.seed)),
                       "defined": torch.ones(len(store.classes), 2, dtype=torch.bool),
                       "degrees": torch.full((len(store.classes),), 0.5)}
        one_round = ROUNDS[settings.stage]
        warm = bench_client(store, settings.warmup_batches * settings.batch_size)
        one_round(method, _context(method, round_index, warm, store, runtime, train, model_config, settings.seed, payload))
        if runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        both_views = random_affine(torch.from_numpy(store.read(np.arange(2 * settings.batch_size) % len(store.image_ids))).to(runtime.device),
                                   train.augment, torch.Generator().manual_seed(settings.seed))
        # The stage and its bound alternate, and the fastest of each counts: on a shared machine the
        # ratio of the two is then far steadier than either figure alone.
        seconds, bound, peak = math.inf, None, 0.0
        for _ in range(settings.repeats):
            ctx = _context(method, round_index, client, store, runtime, train, model_config, settings.seed, payload)
            _synchronize(runtime)
            start = time.perf_counter()
            one_round(method, ctx)
            _synchronize(runtime)
            seconds = min(seconds, time.perf_counter() - start)
            if settings.stage != "loader":
                views = method.views(round_index)
                plain = plain_seconds_per_image(model_config, len(store.classes), both_views[: views * settings.batch_size], runtime,
                                                max(1, settings.images // settings.batch_size))
                bound = max(bound or 0.0, bound_images_per_second(settings.stage, views, *plain))
                peak = max(peak, measured_peak_flops(runtime))
        shape = store.images.shape
        flops = None
        if settings.stage != "loader":
            views = method.views(round_index)
            flops = stage_flops_per_image(settings.stage, views, *step_flops_per_image(
                model_config, len(store.classes), (views * settings.batch_size, *both_views.shape[1:])))
    images_per_second = settings.images / seconds
    arithmetic = peak / flops if flops else None
    return BenchResult(
        stage=settings.stage,
        images=settings.images,
        size=int(shape[2]),
        channels=int(shape[1]),
        model=settings.model if settings.stage != "loader" else "none",
        batch_size=settings.batch_size,
        device=runtime.device.type,
        device_name=torch.cuda.get_device_name() if runtime.device.type == "cuda" else _cpu_name(),
        precision=runtime.precision if settings.stage != "loader" else "uint8→fp32",
        threads=torch.get_num_threads(),
        store=str(settings.store) if settings.store else "synthetic (temporary)",
        seconds=round(seconds, 6),
        images_per_second=round(images_per_second, 2),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        gpu_peak_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if runtime.device.type == "cuda" else None,
        torch_version=torch.__version__,
        bound_images_per_second=round(bound, 2) if bound is not None else None,
        fraction_of_bound=round(images_per_second / bound, 4) if bound is not None else None,
        flops_per_image=flops,
        peak_flops=round(peak, 1) if flops else None,
        arithmetic_bound_images_per_second=round(arithmetic, 2) if arithmetic else None,
        fraction_of_arithmetic_bound=round(images_per_second / arithmetic, 5) if arithmetic else None,
    )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def write_json(result: BenchResult, path: Path) -> None:
    from fedmlp.atomic import write_text

    write_text(path, json.dumps({**asdict(result), "hostname": platform.node(), "cpu_count": os.cpu_count()}, indent=2) + "\n")
