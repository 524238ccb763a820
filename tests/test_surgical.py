"""Surgical Aggregation: the server step on hand-made uploads, the classifier's keys for both
architectures, and the reduction to FedAvg when every client annotates every class."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.methods import registry
from fedmlp.methods.base import weighted_average
from fedmlp.methods.messages import Upload
from fedmlp.methods.surgical import ANNOTATED, classifier_keys, surgical_average
from fedmlp.models import build_model
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
KEYS = ("head.weight", "head.bias")


def upload(client: int, n: int, annotated: list[bool], seed: int, weight: float | None = None) -> Upload:
    g = torch.Generator().manual_seed(seed)
    weights = {"conv.weight": torch.randn(2, 3, generator=g), "head.weight": torch.randn(3, 4, generator=g),
               "head.bias": torch.randn(3, generator=g), "bn.num_batches_tracked": torch.tensor(client)}
    return Upload(client, n, weights, weight=weight, payload={ANNOTATED: torch.tensor(annotated)})


PREVIOUS = {"head.weight": torch.full((3, 4), 7.0), "head.bias": torch.full((3,), -7.0)}


@pytest.mark.parametrize("weight", [None, 1.0])
def test_every_class_annotated_everywhere_is_fedavg_bit_for_bit(weight: float | None) -> None:
    updates = [upload(k, n, [True] * 3, seed=k, weight=weight) for k, n in enumerate([13, 20, 7])]
    expected = weighted_average(updates)
    merged = surgical_average(updates, PREVIOUS, KEYS)
    assert merged.keys() == expected.keys()
    assert all(torch.equal(merged[k], expected[k]) for k in expected)


def test_class_rows_average_over_their_annotators_only() -> None:
    # class 0: clients 0 and 1; class 1: client 2 only; class 2: nobody
    updates = [upload(0, 10, [True, False, False], 0), upload(1, 30, [True, False, False], 1),
               upload(2, 60, [False, True, False], 2)]
    merged = surgical_average(updates, PREVIOUS, KEYS)
    fedavg = weighted_average(updates)
    assert torch.equal(merged["conv.weight"], fedavg["conv.weight"])  # below the classifier: FedAvg
    assert torch.equal(merged["bn.num_batches_tracked"], fedavg["bn.num_batches_tracked"])
    for key in KEYS:
        w = [u.weights[key] for u in updates]
        assert torch.allclose(merged[key][0], (10 * w[0][0] + 30 * w[1][0]) / 40)
        assert torch.allclose(merged[key][1], w[2][1])  # the one annotator's row, not shrunk by the others
        assert torch.equal(merged[key][2], PREVIOUS[key][2])  # nobody annotates it: the previous global row
        assert not torch.allclose(fedavg[key][1], w[2][1])  # FedAvg would have mixed in the non-annotators


def test_unweighted_rows_are_plain_means_of_annotators() -> None:
    updates = [upload(k, n, [True, k < 2, False], seed=k, weight=1.0) for k, n in enumerate([10, 30, 60])]
    merged = surgical_average(updates, PREVIOUS, KEYS)
    w = [u.weights["head.weight"] for u in updates]
    assert torch.allclose(merged["head.weight"][0], (w[0][0] + w[1][0] + w[2][0]) / 3)
    assert torch.allclose(merged["head.weight"][1], (w[0][1] + w[1][1]) / 2)


@pytest.mark.parametrize("arch", ["compact-cnn", "resnet18"])
def test_classifier_keys_name_the_final_linear_layer(arch: str) -> None:
    model = build_model(ModelConfig(arch=arch, width=4), n_classes=5)
    weight, bias = classifier_keys(model)
    state = model.state_dict()
    assert state[weight].shape[0] == 5 and state[bias].shape == (5,)
    assert state[weight].shape[1] == model.eval().features(torch.zeros(1, 3, 32, 32)).shape[1]


def _train(store: ImageStore, federation: dict, name: str) -> torch.nn.Module:
    return federated.run(store, federation, registry.create(name), TRAIN, MODEL, 0, runtime.resolve("cpu", "fp32", 1)).model


def test_with_every_class_annotated_it_trains_as_fedavg_full(store: ImageStore, federation: dict) -> None:
    everything = copy.deepcopy(federation)
    for entry in everything["clients"]:
        entry["annotated_classes"] = list(store.classes)
    surgical, fedavg = _train(store, everything, "surgical"), _train(store, everything, "fedavg-full")
    assert all(torch.equal(a, b) for a, b in zip(surgical.state_dict().values(), fedavg.state_dict().values()))


def test_partial_annotation_changes_the_classifier_only(store: ImageStore, federation: dict) -> None:
    """On the fixture (3 clients, 2 of 5 classes each) the first round's backbone equals
    fedavg-masked's, its classifier does not: the per-class renormalisation acts."""
    one = dataclasses.replace(TRAIN, rounds=1)
    rt = runtime.resolve("cpu", "fp32", 1)
    surgical = federated.run(store, federation, registry.create("surgical"), one, MODEL, 0, rt).model.state_dict()
    masked = federated.run(store, federation, registry.create("fedavg-masked"), one, MODEL, 0, rt).model.state_dict()
    keys = set(classifier_keys(build_model(MODEL, len(store.classes))))
    assert all(torch.equal(surgical[k], masked[k]) for k in surgical if k not in keys)
    assert not all(torch.equal(surgical[k], masked[k]) for k in keys)

