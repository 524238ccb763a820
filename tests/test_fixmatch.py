"""FedAvg + FixMatch's pieces on hand-made inputs, and the method end to end on the small store."""

from __future__ import annotations

import math

import pytest
import torch
from gatelog import client_ids, client_rates

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.methods import registry
from fedmlp.methods.fixmatch import confidence_mask, positive_weights, pseudo_labels, supervised_loss, unsupervised_loss
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
# class 0 annotated, classes 1 and 2 missing
PROBABILITIES = torch.tensor([[0.9, 0.85, 0.5], [0.1, 0.1, 0.95], [0.5, 0.79, 0.21], [0.95, 0.8, 0.2]])
MISSING = torch.tensor([False, True, True])


def test_per_entry_mask_from_known_probabilities() -> None:
    mask = confidence_mask(PROBABILITIES, MISSING, high=0.8, low=0.2)
    assert mask.tolist() == [
        [False, True, False],  # 0.85 confident, 0.5 not; the annotated class is never masked in
        [False, True, True],
        [False, False, False],  # 0.79 and 0.21 are inside the band
        [False, False, False],  # the band's ends are not confident (strict inequalities)
    ]
    assert pseudo_labels(PROBABILITIES).tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 1, 0]]


def test_sample_and_gate_of_the_published_code() -> None:
    mask = confidence_mask(PROBABILITIES, MISSING, high=0.8, low=0.2, gate="sample")
    assert mask.tolist() == [[False] * 3, [False, True, True], [False] * 3, [False] * 3]  # only row 1 is confident on both
    assert not confidence_mask(PROBABILITIES, torch.zeros(3, dtype=torch.bool), 0.8, 0.2, gate="sample").any()
    entry = confidence_mask(PROBABILITIES, MISSING, 0.8, 0.2)
    assert (confidence_mask(PROBABILITIES, MISSING, 0.8, 0.2, "sample") <= entry).all()  # the gate only removes entries


def test_unsupervised_normalisations() -> None:
    logits = torch.zeros(4, 3)  # BCE = log 2 whatever the target
    targets = pseudo_labels(PROBABILITIES)
    mask = torch.zeros(4, 3, dtype=torch.bool)
    mask[1, 1:] = True  # one sample, both missing classes
    mask[3, 1] = True  # and one entry of another
    assert unsupervised_loss(logits, targets, mask, MISSING, "batch").item() == pytest.approx(3 * math.log(2) / (4 * 2))
    assert unsupervised_loss(logits, targets, mask, MISSING, "selected").item() == pytest.approx(3 * math.log(2) / (2 * 2))
    hand = torch.tensor([[0.0, 2.0, -1.0]] * 4)
    value = unsupervised_loss(hand, targets, mask, MISSING, "batch").item()
    # row 1: ŷ = 0 at z = 2, ŷ = 1 at z = −1; row 3: ŷ = 1 at z = 2
    expected = (math.log1p(math.exp(2.0)) + math.log1p(math.exp(1.0)) + math.log1p(math.exp(-2.0))) / 8
    assert value == pytest.approx(expected, rel=1e-5)


def test_unsupervised_loss_is_zero_when_nothing_is_confident() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    mask = confidence_mask(torch.full((4, 3), 0.5), MISSING, 0.8, 0.2)
    for normalisation in ("batch", "selected"):
        loss = unsupervised_loss(logits, pseudo_labels(torch.full((4, 3), 0.5)), mask, MISSING, normalisation)
        assert loss.item() == 0.0
        (grad,) = torch.autograd.grad(loss, logits)
        assert not grad.any()
    nothing_missing = torch.zeros(3, dtype=torch.bool)  # confident, but no missing class to pseudo-label
    mask = confidence_mask(torch.full((4, 3), 0.99), nothing_missing, 0.8, 0.2)
    assert unsupervised_loss(logits, torch.ones(4, 3), mask, nothing_missing).item() == 0.0


def test_supervised_loss_on_annotated_classes_only() -> None:
    logits = torch.tensor([[0.0, 5.0, -5.0], [0.0, -5.0, 5.0]])
    observed = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    annotated = ~MISSING
    assert supervised_loss(logits, observed, annotated).item() == pytest.approx(math.log(2))  # missing columns ignored
    weighted = supervised_loss(logits, observed, annotated, torch.tensor([3.0, 1.0, 1.0]))
    assert weighted.item() == pytest.approx((3 * math.log(2) + math.log(2)) / 2)
    assert supervised_loss(logits, observed, torch.zeros(3, dtype=torch.bool)).item() == 0.0
    weights = positive_weights(torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), torch.tensor([True, False]))
    assert weights.tolist() == pytest.approx([4 / 3, 1.0])


def test_thresholds_must_bracket_one_half() -> None:
    with pytest.raises(FedmlpError, match="fedavg_fixmatch.threshold_high"):
        registry.create("fedavg-fixmatch", {"threshold_high": 0.4})
    with pytest.raises(FedmlpError, match="fedavg_fixmatch.gate"):
        registry.create("fedavg-fixmatch", {"gate": "all"})


NARROW = {"threshold_high": 0.55, "threshold_low": 0.45}  # so that a 3-round run from scratch has confident entries


VARIANTS = [{}, {"variant": "official-code"}, NARROW, {**NARROW, "gate": "sample", "normalisation": "selected"}]


@pytest.mark.parametrize("settings", VARIANTS)
def test_fixmatch_trains_and_records_the_mask_rate(store: ImageStore, federation: dict, settings: dict) -> None:
    rt = runtime.resolve("cpu", "fp32", 1)
    start = federated.init_model(MODEL, len(store.classes), 0, rt)
    method = registry.create("fedavg-fixmatch", settings)
    result = federated.run(store, federation, method, TRAIN, MODEL, 0, rt)
    rates = list(client_rates(result, "pseudo", [1, 2, 3], client_ids(federation)).values())
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.test_mAP) for r in result.history)
    weights = result.model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert any(not torch.equal(weights[k], v) for k, v in start.state_dict().items() if v.is_floating_point())
    if settings.get("threshold_high") == 0.55:
        assert max(rates) > 0  # the unsupervised term is used (with the AND gate too)


def test_variants_train_differently(store: ImageStore, federation: dict) -> None:
    rt = runtime.resolve("cpu", "fp32", 1)
    short = TrainConfig(rounds=1, batch_size=8, precision="fp32", device="cpu")
    clean = federated.run(store, federation, registry.create("fedavg-fixmatch", {}), short, MODEL, 0, rt)
    official_method = registry.create("fedavg-fixmatch", {"variant": "official-code"})
    official = federated.run(store, federation, official_method, short, MODEL, 0, rt)
    assert not torch.equal(clean.model.head.weight, official.model.head.weight)
