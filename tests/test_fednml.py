"""FedNML's pieces on hand-made inputs, and the method end to end on the small store."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gatelog import client_ids, client_rates
from hidden import permuted_labels

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.methods import registry
from fedmlp.methods.base import ServerContext
from fedmlp.methods.fednml import PRIOR_BOUNDS, hybrid_labels, kd_ramp, label_offset, refinement_loss, share_of_rounds
from fedmlp.methods.messages import Upload
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
# Hard-label bounds that a 3-round model's outputs (near 1/2) cross, so the hard pseudo-labels are used.
NARROW = {"hard_high": 0.5001, "hard_low": 0.4999}


def run(store: ImageStore, federation: dict, settings: dict | None = None, **kwargs) -> federated.RunResult:
    method = registry.create("fednml", settings or {})
    return federated.run(store, federation, method, TRAIN, MODEL, 0, runtime.resolve("cpu", "fp32", 1), **kwargs)


def test_schedule_in_shares_of_the_run() -> None:
    assert share_of_rounds(100, 0.1) == 10 and share_of_rounds(100, 0.05) == 5  # the published code's 10 and 5
    assert share_of_rounds(20, 0.1) == 2 and share_of_rounds(20, 0.05) == 1 and share_of_rounds(3, 0.1) == 1
    assert share_of_rounds(4, 1.0) == 4
    method = registry.create("fednml")
    assert [t for t in range(20) if method.refines(t, 20)] == list(range(2, 20))
    assert [t for t in range(100) if method.refines(t, 100)] == list(range(10, 100, 5))


def test_kd_ramp_matches_the_published_schedule() -> None:
    scale, s = 0.8, 2.0
    assert kd_ramp(10, 10, 100, scale, s) == pytest.approx(0.8 * math.exp(-2))  # ≈ 0.108 at the warm-up's end
    assert kd_ramp(0, 10, 100, scale, s) == pytest.approx(0.8 * math.exp(-2))
    assert kd_ramp(100, 10, 100, scale, s) == pytest.approx(0.8)
    assert kd_ramp(55, 10, 100, scale, s) == pytest.approx(0.8 * math.exp(-0.5))
    values = [kd_ramp(t, 2, 20, scale, s) for t in range(20)]
    assert all(a <= b for a, b in zip(values, values[1:])) and values[-1] < scale
    assert kd_ramp(4, 5, 5, scale, s) == pytest.approx(0.8 * math.exp(-2)) and kd_ramp(5, 5, 5, scale, s) == pytest.approx(0.8)


def test_hybrid_labels_harden_only_confident_outputs() -> None:
    p = torch.tensor([0.95, 0.9, 0.5, 0.1, 0.05])
    assert torch.equal(hybrid_labels(p, 0.9, 0.1), torch.tensor([1.0, 0.9, 0.5, 0.1, 0.0]))


def test_offset_rules_agree_on_hard_labels_and_differ_on_soft_ones() -> None:
    prior = torch.tensor([0.2, 0.5, 0.9])
    hard = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(label_offset(hard, prior, "soft"), label_offset(hard, prior, "exact"))
    assert label_offset(hard, prior, "soft")[0, 0].item() == pytest.approx(math.log(0.2))
    assert label_offset(hard, prior, "soft")[1, 0].item() == pytest.approx(math.log(0.8))
    soft = torch.tensor([[0.5, 0.5, 0.5]])
    assert label_offset(soft, prior, "soft")[0, 0].item() == pytest.approx(0.5 * (math.log(0.2) + math.log(0.8)))
    assert label_offset(soft, prior, "exact")[0, 0].item() == pytest.approx(math.log(0.8))  # the negative side's


def test_with_no_distillation_and_an_even_prior_it_is_bce_on_shifted_logits() -> None:
    """w = 0 and π = 1/2 everywhere: plain BCE on Y with every logit shifted by log 1/2."""
    logits = torch.tensor([[0.5, -1.0, 2.0], [-0.5, 1.0, 0.0]])
    teacher = torch.tensor([[3.0, -3.0, 0.0], [1.0, 1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.0, 0.7]])
    offset = label_offset(targets, torch.full((3,), 0.5), "soft")
    assert torch.allclose(offset, torch.full_like(offset, math.log(0.5)))
    expected = F.binary_cross_entropy_with_logits(logits + math.log(0.5), targets)
    assert refinement_loss(logits, teacher, targets, offset, 0.0).item() == pytest.approx(expected.item())
    distill = F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher))
    assert refinement_loss(logits, teacher, targets, 0.0, 1.0).item() == pytest.approx(distill.item())
    mixed = refinement_loss(logits, teacher, targets, 0.0, 0.25).item()
    assert mixed == pytest.approx(0.25 * distill.item() + 0.75 * F.binary_cross_entropy_with_logits(logits, targets).item())


def test_census_prior_is_broadcast_from_the_warm_ups_end() -> None:
    method = registry.create("fednml", {"warmup_fraction": 0.2})
    assert method.census(0)
    counts = [torch.tensor([[8.0, 2.0], [0.0, 0.0]]), torch.tensor([[3.0, 1.0], [0.0, 0.0]])]  # class 1 annotated by nobody
    server = ServerContext(0, 10, None, [0, 1], torch.Generator(), None)
    method.server_census(server, [Upload(i, 10, payload={"counts": c}) for i, c in enumerate(counts)])
    assert method.server.prior.tolist() == pytest.approx([4 / 16, 0.5])  # (3 + 1) / (14 + 2); nobody: 1/2
    assert not method.census(1)  # once
    assert method.broadcast_payload(dataclasses.replace(server, round=1)) == {}
    assert torch.equal(method.broadcast_payload(dataclasses.replace(server, round=2))["prior"], method.server.prior)
    assert not registry.create("fednml", {"logit_adjust": False}).census(0)


def test_warm_up_alone_equals_fedavg_masked(store: ImageStore, federation: dict) -> None:
    ours = run(store, federation, {"warmup_fraction": 1.0}).model
    rt = runtime.resolve("cpu", "fp32", 1)
    masked = federated.run(store, federation, registry.create("fedavg-masked"), TRAIN, MODEL, 0, rt).model
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), masked.state_dict().values()))


def test_refinement_keeps_observed_labels_and_logs_the_hard_share(store: ImageStore, federation: dict) -> None:
    kept: dict[int, list[dict]] = {}

    def keep(round_number, clients, states):
        kept[round_number] = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in states]
        return []

    result = run(store, federation, NARROW, on_round_end=keep)
    ids = client_ids(federation)
    rates = client_rates(result, "hard", [2, 3], ids)  # every refinement round (all after the 1-round warm-up)
    assert any(rate > 0 for rate in rates.values())
    for entry, state in zip(federation["clients"], kept[3]):
        annotated = torch.tensor([c in entry["annotated_classes"] for c in store.classes])
        rows = np.sort(store.rows(entry["images"]))
        observed = torch.from_numpy(store.labels[rows].astype(np.float32))
        labels, prior = state["labels"], state["prior"]
        assert state["refined"] and torch.equal(labels[:, annotated], observed[:, annotated])
        assert ((labels >= 0) & (labels <= 1)).all()
        assert ((prior[~annotated] >= PRIOR_BOUNDS[0]) & (prior[~annotated] <= PRIOR_BOUNDS[1])).all()
    assert all(s["prior"].shape == (len(store.classes),) for s in kept[1]) and not any(s["refined"] for s in kept[1])


def test_hidden_labels_do_not_reach_the_hard_pseudo_labels(store: ImageStore, federation: dict) -> None:
    """The contract suite's permutation, with hard pseudo-labels in use (the default's are all soft at this scale)."""
    shuffled = permuted_labels(store, federation, seed=1)  # tests/hidden.py
    original = run(store, federation, NARROW)
    permuted = run(dataclasses.replace(store, labels=shuffled), federation, NARROW)
    assert any(g["rate"] > 0 for g in original.gates)
    assert all(torch.equal(a, b) for a, b in zip(original.model.state_dict().values(), permuted.model.state_dict().values()))


@pytest.mark.parametrize("settings", [{}, {"offset_rule": "exact"}, {"logit_adjust": False}])
def test_trains_end_to_end(store: ImageStore, federation: dict, settings: dict) -> None:
    result = run(store, federation, settings)
    assert [r.round for r in result.history] == [1, 2, 3]
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.test_mAP) for r in result.history)
