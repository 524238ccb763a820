"""Counted compute (fedmlp.compute): the passes follow from what a method does, the compute-matched
control costs twice fedavg-masked, counting changes no result, and a staged FedMLP run counts all its
stages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmlp import federated, runtime
from fedmlp.cli import main
from fedmlp.compute import Compute, Passes
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.methods import registry
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=2, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
FEDMLP = {"warmup_rounds": 1}


def trained_images(federation: dict, batch_size: int) -> int:
    """Images one local epoch of every client passes through (a trailing batch of one is dropped)."""
    sizes = [len(c["images"]) for c in federation["clients"]]
    return sum(n - (n % batch_size == 1) for n in sizes)


def run(store: ImageStore, federation: dict, name: str, train: TrainConfig = TRAIN, settings: dict | None = None) -> federated.RunResult:
    return federated.run(store, federation, registry.create(name, settings or {}), train, MODEL, 0, runtime.resolve("cpu", "fp32", 1))


@pytest.mark.parametrize("local_epochs", [1, 2])
def test_one_and_two_views_count_one_and_two_training_passes(store: ImageStore, federation: dict, local_epochs: int) -> None:
    train = TrainConfig(rounds=2, batch_size=8, precision="fp32", device="cpu", local_epochs=local_epochs)
    expected = trained_images(federation, train.batch_size) * local_epochs * train.rounds
    one, two = (run(store, federation, name, train).compute for name in ("fedavg-masked", "fedavg-masked-2view"))
    assert one.passes == Passes(forward_backward=expected, forward_only=0)
    assert two.passes == Passes(forward_backward=2 * expected, forward_only=0)
    assert one.train_images == sum(len(c["images"]) for c in federation["clients"]) and one.rounds == train.rounds
    assert two.to_json()["cost"] == pytest.approx(2 * one.to_json()["cost"])
    assert one.to_json()["forward_backward"] == pytest.approx(local_epochs, rel=0.1)  # 1 per image per epoch, less a dropped image


@pytest.mark.parametrize("name", ["fedirm", "fedmlp"])
def test_teacher_passes_are_counted_without_gradients(store: ImageStore, federation: dict, name: str) -> None:
    compute = run(store, federation, name, settings=FEDMLP if name == "fedmlp" else {}).compute
    assert compute.passes.forward_only > 0 and compute.passes.forward_backward > 0
    summary = compute.to_json()
    assert summary["cost"] == pytest.approx(3 * summary["forward_backward"] + summary["forward_only"])


def test_counting_changes_no_result(store: ImageStore, federation: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    counted = run(store, federation, "fedirm")
    monkeypatch.setattr(Passes, "watch", lambda self, *models: None)
    uncounted = run(store, federation, "fedirm")
    assert uncounted.compute.passes == Passes()
    assert all(torch.equal(a, b) for a, b in zip(counted.model.state_dict().values(), uncounted.model.state_dict().values()))
    np.testing.assert_equal(federated.history_rows(counted.history), federated.history_rows(uncounted.history))  # NaN equals NaN


def test_stages_add_up_and_a_foreign_stage_is_refused() -> None:
    warmup, detection = Compute(50, 1, Passes(100, 40)), Compute(50, 0, Passes(0, 50))
    total = warmup + detection
    assert total == Compute(50, 1, Passes(100, 90)) and Compute.from_json(total.counts(), "x") == total
    with pytest.raises(FedmlpError, match="not one run"):
        warmup + Compute(49, 1, Passes())
    with pytest.raises(FedmlpError, match="x: not a compute file"):
        Compute.from_json({"train_images": 50, "rounds": -1, "forward_backward_images": 1, "forward_only_images": 1}, "x")


def test_staged_fedmlp_counts_all_its_stages_as_one_run(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    """warmup → pseudolabel → teacher writes the compute of ``fedmlp train`` of the same run into metrics.json."""
    partition = tmp_path / "partition.json"
    partition.write_text(json.dumps(federation))
    common = ["--store", str(store.root), "--partition", str(partition), "--method", "fedmlp", "--seed", "0",
              "--train", json.dumps({"rounds": 2, "batch_size": 8, "precision": "fp32", "device": "cpu"}),
              "--model", json.dumps({"width": 4}), "--method-settings", json.dumps(FEDMLP)]
    scored = ["--run", json.dumps({"dataset": "d", "setting": "s", "method": "fedmlp", "seed": 0})]

    def out(stage: str, name: str) -> str:
        return str(tmp_path / stage / name)

    def command(name: str, stage: str, *extra: str) -> None:
        assert main(["--log-level", "ERROR", name, *common, *extra]) == 0, name

    command("train", "one", "--out-model", out("one", "model.pt"), "--out-rounds", out("one", "rounds.csv"), *scored,
            "--out-metrics", out("one", "metrics.json"), "--out-predictions", out("one", "predictions.csv"))
    command("warmup", "warmup", "--out-model", out("warmup", "model.pt"), "--out-rounds", out("warmup", "rounds.csv"),
            "--out-compute", out("warmup", "compute.json"))
    command("pseudolabel", "staged", "--warmup-model", out("warmup", "model.pt"), "--out-artifact", out("staged", "pseudolabels.json"),
            "--out-summary", out("staged", "pseudolabels.md"), "--out-compute", out("staged", "pseudolabel-compute.json"))
    command("teacher", "staged", "--warmup-model", out("warmup", "model.pt"), "--warmup-rounds", out("warmup", "rounds.csv"),
            "--pseudolabels", out("staged", "pseudolabels.json"),
            "--earlier-compute", out("warmup", "compute.json"), out("staged", "pseudolabel-compute.json"),
            "--out-model", out("staged", "model.pt"), "--out-rounds", out("staged", "rounds.csv"), *scored,
            "--out-diagnostics", out("staged", "diagnostics.csv"), "--out-metrics", out("staged", "metrics.json"),
            "--out-predictions", out("staged", "predictions.csv"))
    one, staged = (json.loads(Path(out(stage, "metrics.json")).read_text())["compute"] for stage in ("one", "staged"))
    detection = json.loads(Path(out("staged", "pseudolabel-compute.json")).read_text())
    assert detection["rounds"] == 0 and detection["forward_only_images"] > 0 and detection["forward_backward_images"] == 0
    assert staged == one and one["rounds"] == 2 and one["forward_only"] > 0
