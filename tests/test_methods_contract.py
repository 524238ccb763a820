"""What every registered method must satisfy, checked for each one: a method added later gets these
tests without editing them. Tiny settings (3 rounds on the 80-image fixture store)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmlp import checkpoint, federated, methods, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.methods import registry
from fedmlp.resume import ResumePoint
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
# Settings that make a 3-round run exercise the method (FedMLP: its schedule must equal train.rounds;
# the fixed fractions large enough to select something from a 20-image client).
FIXED = {"tau0": {"min": 0, "max": 1, "fixed": 0.3}, "tau1": {"min": 0, "max": 1, "fixed": 0.3}}
SETTINGS = {
    "fedmlp": {"warmup_rounds": 1, "rounds": 2},
    "fedmlp-fixed": {"warmup_rounds": 1, "rounds": 2, **FIXED},
    "fedmlp-official": {"warmup_rounds": 1, "rounds": 2, **FIXED},
    "cbafed": {"tau_base": 0.0, "tau_min": 0.505},  # thresholds a 3-round model's outputs reach
}
NAMES = registry.names()


def create(name: str) -> methods.Method:
    return methods.create(name, SETTINGS.get(name, {}))


def train(store: ImageStore, federation: dict, name: str, **kwargs) -> federated.RunResult:
    rt = runtime.resolve("cpu", "fp32", 1)
    return federated.run(store, federation, create(name), TRAIN, MODEL, 0, rt, **kwargs)


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_every_method_is_registered_with_a_summary() -> None:
    expected = {"fedavg-full", "fedavg-partial", "fedavg-masked", "fedmlp", "fedmlp-fixed", "fedmlp-official"}
    assert expected <= set(NAMES)
    for spec in registry.specs().values():
        assert spec.summary, f"{spec.name}: no summary"
        assert (spec.section is None) == (spec.config is None), spec.name


@pytest.mark.parametrize("name", NAMES)
def test_trains_the_round_budget(store: ImageStore, federation: dict, name: str) -> None:
    result = train(store, federation, name)
    assert [r.round for r in result.history] == [1, 2, 3]
    assert all(np.isfinite(r.train_loss) for r in result.history) and np.isfinite(result.history[-1].test_mAP)


@pytest.mark.parametrize("name", [n for n in NAMES if create(n).label_access == "partial"])
def test_hidden_labels_do_not_influence_training(store: ImageStore, federation: dict, name: str) -> None:
    """Flipping and permuting the true labels of every client's missing classes leaves the weights bit-identical."""
    shuffled = store.labels.copy()
    rng = np.random.default_rng(0)
    for entry in federation["clients"]:
        rows = store.rows(entry["images"])
        for c, cls in enumerate(store.classes):
            if cls not in entry["annotated_classes"]:
                shuffled[rows, c] = rng.permutation(1 - shuffled[rows, c])
    original = train(store, federation, name).model
    permuted = train(dataclasses.replace(store, labels=shuffled), federation, name).model
    assert weights_equal(original, permuted)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_checkpoint_bytes(store: ImageStore, federation: dict, name: str, tmp_path: Path) -> None:
    for run in ("a", "b"):
        checkpoint.save(tmp_path / f"{run}.pt", train(store, federation, name).model, {"method": name})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


class Killed(Exception):
    pass


@pytest.mark.parametrize("name", NAMES)
def test_killed_and_resumed_equals_uninterrupted(store: ImageStore, federation: dict, name: str, tmp_path: Path) -> None:
    """The state saved after round 1 (weights, clients' and server's state, through torch.save with
    weights_only) continues to the same weights as a run that was never stopped."""
    whole = train(store, federation, name)
    point = ResumePoint(tmp_path / "state.pt", key="run")

    def stop_in_round_2(round_number, clients, states):
        if round_number == 2:
            raise Killed
        return []

    with pytest.raises(Killed):
        train(store, federation, name, resume=point, on_round_end=stop_in_round_2)
    assert point.load()["round"] == 1
    resumed = train(store, federation, name, resume=point)
    assert weights_equal(whole.model, resumed.model)
    assert [r.round for r in resumed.history] == [1, 2, 3]


@pytest.mark.parametrize("name", NAMES)
def test_server_state_survives_a_save_load_round_trip(store: ImageStore, federation: dict, name: str) -> None:
    method = create(name)
    federated.run(store, federation, method, dataclasses.replace(TRAIN, rounds=2), MODEL, 0, runtime.resolve("cpu", "fp32", 1),
                  rounds=range(2))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = create(name)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert _flat(restored.state_dict()) == _flat(method.state_dict())


def _flat(value) -> object:
    """A comparable form of nested state (tensors by value, NaN-aware)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), value.flatten().tolist().__repr__())
    if isinstance(value, dict):
        return {k: _flat(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flat(v) for v in value]
    return repr(value)
