"""FedIRM's pieces on hand-made inputs, and the method end to end on the small store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gatelog import client_ids, client_rates

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.methods import fedirm, registry
from fedmlp.methods.fedirm import (
    aggregate_relation,
    ema_alpha,
    official_relation_divergence,
    phase1_rounds,
    pseudo_targets,
    relation_divergence,
    relation_rows,
    relation_sums,
    sample_mask,
    sigmoid_rampup,
    symmetric_bernoulli_kl,
)
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)


def test_relation_matrix_from_known_logits_and_labels() -> None:
    logits = torch.tensor([[2.0, -4.0, 0.0], [4.0, 2.0, 6.0], [-8.0, 8.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    sums, counts = relation_sums(logits, labels)
    assert counts.tolist() == [2.0, 1.0, 0.0]
    assert sums.tolist() == [[6.0, -2.0, 6.0], [4.0, 2.0, 6.0], [0.0, 0.0, 0.0]]
    rows = relation_rows(sums, counts, temperature=2.0)
    expected = torch.sigmoid(torch.tensor([[3.0, -1.0, 3.0], [4.0, 2.0, 6.0]]) / 2.0)  # mean logits of the positives / T
    assert torch.allclose(rows[:2], expected)
    assert rows[2].tolist() == [0.5, 0.5, 0.5]  # no positive: σ(0)
    # accumulating over batches equals one pass over the epoch
    a, b = relation_sums(logits[:1], labels[:1]), relation_sums(logits[1:], labels[1:])
    assert torch.allclose(relation_rows(a[0] + b[0], a[1] + b[1], 2.0), rows)


def test_rows_are_aggregated_over_annotators_by_count() -> None:
    c = 3
    r1, r2, r3 = torch.full((c, c), 0.2), torch.full((c, c), 0.8), torch.full((c, c), 0.6)
    counts = [torch.tensor([1.0, 4.0, 0.0]), torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0])]
    merged, defined = aggregate_relation([r1, r2, r3], counts)
    assert defined.tolist() == [True, True, False]
    assert torch.allclose(merged[0], torch.full((c,), (1 * 0.2 + 3 * 0.8) / 4))
    assert torch.allclose(merged[1], torch.full((c,), 0.2))  # only client 1 has positives of class 1
    assert merged[2].tolist() == [0.5] * c  # nobody annotates class 2 (client 3's row has weight 0)


def test_symmetric_bernoulli_kl_on_known_values() -> None:
    p, q = torch.tensor([0.5, 0.8, 0.3]), torch.tensor([0.8, 0.5, 0.3])
    kl = lambda a, b: a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))  # noqa: E731
    expected = 0.5 * (kl(0.5, 0.8) + kl(0.8, 0.5))
    values = symmetric_bernoulli_kl(p, q)
    assert values.tolist() == pytest.approx([expected, expected, 0.0], abs=1e-6)
    assert expected == pytest.approx(0.15 * math.log(4))
    matrix = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    every = torch.ones(4, dtype=torch.bool)
    assert relation_divergence(matrix, every, matrix, every).item() == pytest.approx(0.0, abs=1e-7)
    assert official_relation_divergence(matrix, matrix).item() == pytest.approx(0.0, abs=1e-7)
    other = matrix.flip(0)
    assert relation_divergence(matrix, every, other, every).item() > 0
    # rows without positives in the source, or undefined in the target, are skipped
    source_rows = torch.tensor([True, False, True, True])
    target_rows = torch.tensor([True, True, True, False])
    only = relation_divergence(matrix, source_rows, other, target_rows)
    assert only.item() == pytest.approx(symmetric_bernoulli_kl(matrix[[0, 2]], other[[0, 2]]).mean().item())
    assert relation_divergence(matrix, ~every, other, every).item() == 0.0


def test_official_divergence_is_kl_over_unnormalised_rows() -> None:
    s, t = torch.tensor([[0.5, 0.2]]), torch.tensor([[0.25, 0.4]])
    kl_ts = 0.25 * math.log(0.25 / 0.5) + 0.4 * math.log(0.4 / 0.2)
    kl_st = 0.5 * math.log(0.5 / 0.25) + 0.2 * math.log(0.2 / 0.4)
    expected = 0.5 * (kl_ts + kl_st)  # summed over the entries, divided by 1 row
    assert official_relation_divergence(s, t).item() == pytest.approx(expected)


def test_sample_mask_needs_low_entropy_and_every_class_confident() -> None:
    probabilities = torch.tensor([
        [0.95, 0.02, 0.01],  # confident, low entropy: in
        [0.95, 0.5, 0.01],  # one class unsure: out
        [0.75, 0.75, 0.25],  # confident by 0.7/0.3 but entropy 3 · H(0.75) ≈ 1.69 < 2: in
        [0.71, 0.71, 0.71],  # confident, entropy 3 · H(0.71) ≈ 1.80: in
    ])
    assert sample_mask(probabilities, 2.0, 0.3, 0.7).tolist() == [True, False, True, True]
    assert sample_mask(probabilities, 1.7, 0.3, 0.7).tolist() == [True, False, True, False]  # 1.69 < 1.7 < 1.80
    wide = torch.full((2, 8), 0.75)  # 8 classes: 8 · H(0.75) ≈ 4.5 nats, above the threshold
    assert not sample_mask(wide, 2.0, 0.3, 0.7).any()


def test_pseudo_targets_keep_observed_labels_on_annotated_classes() -> None:
    probabilities = torch.tensor([[0.9, 0.9, 0.2], [0.1, 0.6, 0.7]])
    observed = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    annotated = torch.tensor([True, False, False])
    assert pseudo_targets(probabilities, observed, annotated, 0.5).tolist() == [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    every = pseudo_targets(probabilities, observed, annotated, 0.5, every_class=True)
    assert every.tolist() == [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]


def test_ramp_and_schedule() -> None:
    assert sigmoid_rampup(0, 30) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(30, 30) == 1.0 and sigmoid_rampup(45, 30) == 1.0
    assert sigmoid_rampup(20, 30) == pytest.approx(math.exp(-5 / 9))  # the published code's first phase-2 round: ≈ 0.57
    assert sigmoid_rampup(5, 0) == 1.0
    values = [sigmoid_rampup(t, 10) for t in range(12)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert phase1_rounds(500, 0.04) == 20 and phase1_rounds(20, 0.04) == 1 and phase1_rounds(3, 0.04) == 1
    assert phase1_rounds(2, 0.9) == 1 and phase1_rounds(1, 0.04) == 1
    assert ema_alpha(0, 0.99) == 0.0 and ema_alpha(1, 0.99) == 0.5 and ema_alpha(1000, 0.99) == 0.99


def test_confidence_bounds_are_checked() -> None:
    with pytest.raises(FedmlpError, match="fedirm.confidence_low"):
        registry.create("fedirm", {"confidence_low": 0.8, "confidence_high": 0.7})


@pytest.mark.parametrize("variant", ["clean", "official-code"])
def test_trains_end_to_end(store: ImageStore, federation: dict, variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 rounds: phase 1 in round 1 (which also yields the first global matrix), phase 2 in rounds 2 and 3."""
    rt = runtime.resolve("cpu", "fp32", 1)
    divergences: list[float] = []
    name = "official_relation_divergence" if variant == "official-code" else "relation_divergence"
    original = getattr(fedirm, name)

    def spy(*args):
        value = original(*args)
        divergences.append(float(value.detach()))
        return value

    monkeypatch.setattr(fedirm, name, spy)
    # loose mask settings so that a 3-round model on 32-px images has samples in the source matrix
    loose = {"confidence_low": 0.5, "confidence_high": 0.5, "entropy_threshold": 10.0}
    method = registry.create("fedirm", {"variant": variant, **loose})
    states: list[list[dict]] = []
    result = federated.run(store, federation, method, TRAIN, MODEL, 0, rt,
                           on_round_end=lambda r, clients, s: states.append([dict(x) for x in s]) or [])
    assert [r.round for r in result.history] == [1, 2, 3]
    assert all(np.isfinite(r.train_loss) for r in result.history) and np.isfinite(result.history[-1].test_mAP)
    assert all(torch.isfinite(v.float()).all() for v in result.model.state_dict().values())
    relation, defined = method.server.relation, method.server.defined
    annotated = {c for entry in federation["clients"] for c in entry["annotated_classes"]}
    assert relation.shape == (len(store.classes),) * 2 and torch.isfinite(relation).all()
    assert defined.tolist() == [c in annotated for c in store.classes]
    assert divergences and max(divergences) > 0  # relation matching acted in phase 2
    assert ((relation > 0) & (relation < 1)).all()
    assert all("teacher" not in s for s in states[0]) and all("teacher" in s for s in states[2])
    assert all(s["step"] > 0 for s in states[2])
    mask = client_rates(result, "relation", [2, 3], client_ids(federation))  # the gate acts in phase 2 only
    assert all(mask[(3, c)] > 0 for c in client_ids(federation))
    client_rates(result, "relation_batches", [2, 3], client_ids(federation))
    assert all(v.device.type == "cpu" for s in states[2] for v in s["teacher"].values())
    assert all("relation_accumulator" not in s for r in states for s in r)


@pytest.mark.parametrize("settings", [{"gate": "entry"}, {"gate": "missing", "entropy_threshold": 10.0}])
def test_a_gate_over_fewer_classes_opens_and_the_relation_term_acts(store: ImageStore, federation: dict, settings: dict,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With the confidence band closed to 0.5 every prediction is confident: the entry gate (no entropy
    test) and the missing-classes gate pass entries and samples, and the matching term is not 0."""
    divergences: list[float] = []
    original = fedirm.relation_divergence
    monkeypatch.setattr(fedirm, "relation_divergence", lambda *a: divergences.append(float(original(*a).detach())) or original(*a))
    method = registry.create("fedirm", {"confidence_low": 0.5, "confidence_high": 0.5, **settings})
    result = federated.run(store, federation, method, TRAIN, MODEL, 0, runtime.resolve("cpu", "fp32", 1))
    rates = client_rates(result, "relation", [2, 3], client_ids(federation))
    batches = client_rates(result, "relation_batches", [2, 3], client_ids(federation))
    assert all(rate > 0 for rate in rates.values()) and all(rate > 0 for rate in batches.values())
    assert divergences and max(divergences) > 0


def test_the_gate_setting_is_checked() -> None:
    with pytest.raises(FedmlpError, match="fedirm.gate"):
        registry.create("fedirm", {"gate": "class"})
