"""`fedmlp bench`, and the data path it measures: positioned store reads and batch prefetching."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import bin_dir

from fedmlp import loader
from fedmlp.errors import FedmlpError
from fedmlp.loader import batches, make_client, prefetched
from fedmlp.store import ImageStore

FIELDS = {"stage", "images", "size", "images_per_second", "seconds", "peak_rss_mb", "device", "precision", "gpu_peak_memory_mb"}


def fedmlp(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([f"{bin_dir()}/fedmlp", *map(str, args)], capture_output=True, text=True, timeout=300,
                          env=None if env is None else {**os.environ, **env})


@pytest.mark.parametrize("stage", ["loader", "1", "2"])
def test_bench_reports_each_stage_as_json(stage: str, tmp_path: Path) -> None:
    out, scratch = tmp_path / "bench.json", tmp_path / "scratch"
    scratch.mkdir()
    result = fedmlp("bench", "--stage", stage, "--size", 24, "--images", 40, "--batch-size", 8, "--repeats", 1,
                    "--model", "compact-cnn", "--device", "cpu", "--precision", "fp32", "--json", out, env={"TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert FIELDS <= report.keys()
    assert (report["stage"], report["images"], report["size"], report["device"]) == (stage, 40, 24, "cpu")
    assert report["precision"] == ("uint8→fp32" if stage == "loader" else "fp32")
    assert report["seconds"] > 0 and report["images_per_second"] == pytest.approx(40 / report["seconds"], rel=0.01)
    assert report["peak_rss_mb"] > 10 and report["gpu_peak_memory_mb"] is None
    assert f"stage {stage}:" in result.stdout and "images/s" in result.stdout
    arithmetic = ("flops_per_image", "peak_flops", "arithmetic_bound_images_per_second", "fraction_of_arithmetic_bound")
    if stage == "loader":
        assert report["bound_images_per_second"] is None and report["fraction_of_bound"] is None
        assert all(report[key] is None for key in arithmetic)
    else:  # the plain forward + backward of the same model and batch, scaled by the stage's operations
        assert report["bound_images_per_second"] > 0 and "of the bound" in result.stdout
        assert report["fraction_of_bound"] == pytest.approx(report["images_per_second"] / report["bound_images_per_second"], rel=0.01)
        # and the arithmetic: the stage's counted FLOPs per image against the cores' measured peak
        assert all(report[key] > 0 for key in arithmetic) and "of the arithmetic bound" in result.stdout
        assert report["arithmetic_bound_images_per_second"] == pytest.approx(report["peak_flops"] / report["flops_per_image"], rel=0.01)
        assert report["fraction_of_arithmetic_bound"] == pytest.approx(
            report["images_per_second"] / report["arithmetic_bound_images_per_second"], rel=0.01)
    assert not list(scratch.glob("fedmlp-bench-*"))  # the generated store is gone


def test_bench_on_an_existing_store(store: ImageStore, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = fedmlp("bench", "--stage", "1", "--store", store.root, "--images", 32, "--batch-size", 8,
                    "--model", "compact-cnn", "--device", "cpu", "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["store"] == str(store.root) and report["size"] == store.images.shape[2]


def test_bench_refuses_more_images_than_the_store_holds(store: ImageStore, tmp_path: Path) -> None:
    result = fedmlp("bench", "--stage", "loader", "--store", store.root, "--images", 10_000, "--json", tmp_path / "b.json")
    assert result.returncode == 2
    assert "--images 10000" in result.stderr and str(store.root) in result.stderr
    assert not (tmp_path / "b.json").exists()


def test_store_reads_equal_the_memory_map(store: ImageStore) -> None:
    rows = np.array([5, 6, 7, 2, 40, 41, 0, 79, 79])  # runs, a step back, a repeat
    assert np.array_equal(store.read(rows), store.images[rows])
    assert store.read(np.array([], dtype=np.int64)).shape == (0, *store.images.shape[1:])


def test_a_truncated_store_is_named(store: ImageStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    for path in store.root.iterdir():
        (root / path.name).write_bytes(path.read_bytes())
    images = root / "images.npy"
    opened = ImageStore.open(root)
    images.write_bytes(images.read_bytes()[:-100])  # cut after opening: the read notices
    with pytest.raises(FedmlpError, match=r"images\.npy: shorter than its header says"):
        opened.read(np.array([len(store.image_ids) - 1]))
    with pytest.raises(FedmlpError, match=r"images\.npy: not a readable image array"):  # cut before: the opening does
        ImageStore.open(root)


def test_prefetching_keeps_order_and_errors() -> None:
    assert list(prefetched(iter(range(50)))) == list(range(50))

    def failing() -> Iterator[int]:
        yield 1
        raise FedmlpError("broken batch")

    items = prefetched(failing())
    assert next(items) == 1
    with pytest.raises(FedmlpError, match="broken batch"):
        next(items)


def test_prefetched_batches_do_not_disturb_the_random_stream(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order is drawn before the first batch; what the caller draws meanwhile cannot change it
    (batches are prefetched on a GPU only; here on the CPU as they would be there)."""
    monkeypatch.setattr(loader, "ahead_on", lambda device, items: prefetched(items))
    client = make_client(store, 0, store.image_ids[:50], store.classes[:1])

    def epoch(draw_between: bool) -> list[list[int]]:
        generator = torch.Generator().manual_seed(7)
        seen = []
        for batch in batches(store, client, 8, generator, torch.device("cpu")):
            seen.append(batch.positions.tolist())
            assert torch.equal(batch.images, torch.from_numpy(store.images[client.rows[batch.positions.numpy()]]))
            if draw_between:
                torch.rand(3, generator=generator)
        return seen

    assert epoch(False) == epoch(True)


def test_no_prefetching_thread_on_the_cpu(store: ImageStore) -> None:
    """On the CPU a prefetching thread only contends for the GIL (fedmlp.loader.ahead_on)."""
    client = make_client(store, 0, store.image_ids[:50], store.classes[:1])
    for _ in batches(store, client, 8, torch.Generator().manual_seed(0), torch.device("cpu")):
        assert not [t for t in threading.enumerate() if t.name.startswith("fedmlp-prefetch")]


def test_bound_counts_the_stages_operations() -> None:
    from fedmlp.bench import bound_images_per_second, operations

    # stage 1: two views through the student (forward + backward) and the teacher (forward)
    assert operations("1", views=2) == (2, 2)
    assert bound_images_per_second("1", 2, train_seconds=0.003, forward_seconds=0.001) == pytest.approx(1 / 0.008)
    # stage 2: the client's pass on top; one view (the published code's) halves the student's and teacher's work
    assert operations("2", views=1) == (1, 2)
    assert bound_images_per_second("2", 2, 0.003, 0.001) < bound_images_per_second("1", 2, 0.003, 0.001)
    assert bound_images_per_second("2", 1, 0.003, 0.001) == pytest.approx(1 / 0.005)


def test_flops_are_counted_from_the_model() -> None:
    """torch.utils.flop_counter on the meta device: the same count on every call, per image whatever
    the batch, four times the convolutions' work at twice the side, and a stage's operations added up."""
    from fedmlp.bench import stage_flops_per_image, step_flops_per_image
    from fedmlp.config import ModelConfig

    config = ModelConfig(arch="compact-cnn")
    train, forward = step_flops_per_image(config, 5, (8, 3, 32, 32))
    assert train > forward > 0
    assert step_flops_per_image(config, 5, (8, 3, 32, 32)) == (train, forward)
    assert step_flops_per_image(config, 5, (16, 3, 32, 32)) == pytest.approx((train, forward))
    # four stride-2 stages: at 32 and 64 px every feature map has four times the pixels (the head's few FLOPs do not scale)
    assert step_flops_per_image(config, 5, (8, 3, 64, 64))[0] == pytest.approx(4 * train, rel=0.02)
    assert stage_flops_per_image("1", 2, train, forward) == pytest.approx(2 * train + 2 * forward)
    assert stage_flops_per_image("2", 1, train, forward) == pytest.approx(train + 2 * forward)


def test_bench_scale_reports_each_store_size(tmp_path: Path) -> None:
    """The real 'fedmlp train' on two tiny stores: each size's figures are there and sane, the stores gone."""
    out, scratch = tmp_path / "scale.json", tmp_path / "scratch"
    scratch.mkdir()
    result = fedmlp("bench", "--scale", 128, 64, "--size", 32, "--model", "compact-cnn", "--device", "cpu", "--precision", "fp32",
                    "--train-seconds", 1, "--json", out, env={"TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert [p["images"] for p in report["points"]] == [64, 128]
    for point in report["points"]:
        assert point["first_batch_seconds"] > 0 and point["peak_rss_mb"] > 50 and point["loader_images_per_second"] > 0
        assert point["verify_seconds"] > 0 and point["sha256_gb_per_second"] > 0 and point["label_table_mb"] > 0
    assert report["points"][1]["label_table_mb"] > report["points"][0]["label_table_mb"]
    assert report["settings"]["channels"] == 1 and report["settings"]["extrapolate_to"] == 750_000
    assert {"first_batch_seconds", "peak_rss_mb", "loader_images_per_second", "verify_seconds"} <= report["extrapolated"].keys()
    assert "train" in report["command"] and "--store" in report["command"]
    assert "extrapolated" in result.stdout
    assert not list(scratch.iterdir())  # the stores and the job's outputs are gone


def test_scale_extrapolation_is_a_linear_fit() -> None:
    from fedmlp.bench_scale import ScalePoint, extrapolate

    def point(n: int) -> ScalePoint:  # figures exactly linear in n; the loader at a constant 4,000 images/s
        return ScalePoint(images=n, store_gb=n * 5e-5, verify_seconds=n * 1e-4, sha256_gb_per_second=0.5, first_batch_seconds=2 + n * 1e-5,
                          peak_rss_mb=700 + n * 1e-3, label_table_mb=n * 1e-4, loader_images_per_second=4000.0)

    at = extrapolate([point(2_000), point(10_000), point(25_000)], 750_000)
    assert at["first_batch_seconds"] == pytest.approx(9.5) and at["peak_rss_mb"] == pytest.approx(1450)
    assert at["loader_images_per_second"] == pytest.approx(4000) and at["verify_seconds"] == pytest.approx(75)
    assert extrapolate([point(2_000)], 750_000) == {}


@pytest.mark.parametrize("args", [["--stage", "loader", "--scale", "64"], []])
def test_bench_needs_one_of_stage_and_scale(args: list[str], tmp_path: Path) -> None:
    result = fedmlp("bench", *args, "--json", tmp_path / "b.json")
    assert result.returncode == 2 and "one of --stage" in result.stderr
