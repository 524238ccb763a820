"""FedNoRo's pieces on hand-made inputs, and the method end to end on the small store."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.methods import registry
from fedmlp.methods.base import ServerContext
from fedmlp.methods.common import class_prior, logit_offset, model_distance
from fedmlp.methods.fednoro import daagg_weights, kd_term, ramp, supervised_term
from fedmlp.methods.messages import Upload
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
LOG2 = math.log(2)


def test_ramp_at_its_ends() -> None:
    a, begin, end = 0.8, 0.02, 0.998  # the published code's 10 and 499 of 500 rounds
    floor = a * math.exp(-5)
    assert ramp(0, 500, a, begin, end) == pytest.approx(floor)
    assert ramp(10, 500, a, begin, end) == pytest.approx(floor)
    assert ramp(499, 500, a, begin, end) == pytest.approx(a)
    assert ramp(600, 500, a, begin, end) == pytest.approx(a)
    assert ramp(255, 500, a, begin, end) == pytest.approx(0.23, abs=0.005)
    assert ramp(20, 40, a, 0.25, 0.75) == pytest.approx(a * math.exp(-5 * 0.25))  # half way: (1 − ½)²
    values = [ramp(t, 20, a, begin, end) for t in range(20)]
    assert all(x <= y for x, y in zip(values, values[1:])) and values[-1] < a  # end = 19.96 > the last round
    assert ramp(4, 10, a, 0.5, 0.5) == pytest.approx(floor) and ramp(5, 10, a, 0.5, 0.5) == pytest.approx(a)  # a step


def test_kd_terms_on_known_values() -> None:
    mask = torch.tensor([[True, True, False]])
    teacher = torch.tensor([[0.0, 0.8 * math.log(3), 5.0]])  # σ(z_G / 0.8) = 0.5, 0.75; the last is masked out
    student = torch.tensor([[0.0, 0.0, -5.0]])
    assert kd_term(student, teacher, mask, 0.8, "mse").item() == pytest.approx((0 + 0.25**2) / 2)
    assert kd_term(student, teacher, mask, 0.8, "bce").item() == pytest.approx(LOG2)  # −(q log ½ + (1 − q) log ½)
    matched = torch.tensor([[0.0, math.log(3), 0.0]])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert kd_term(matched, teacher, mask, 0.8, "mse").item() == pytest.approx(0.0, abs=1e-7)
    assert kd_term(matched, teacher, mask, 0.8, "bce").item() == pytest.approx((LOG2 + entropy) / 2)
    assert kd_term(matched, teacher, mask, 1.0, "mse").item() > 0  # T changes the target


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[0.5, -1.0, 2.0], [-0.5, 1.0, 0.0], [1.5, 0.0, -2.0], [0.0, 0.3, 1.0]])
    teacher = torch.tensor([[0.2, 0.1, 1.0], [0.0, -0.4, 0.3], [1.0, 2.0, -1.0], [0.5, 0.5, 0.5]])
    observed = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])
    annotated = torch.tensor([True, False, False])
    return logits, teacher, observed, annotated


def test_logit_adjustment_is_on_in_clean_and_off_in_official_code() -> None:
    logits, teacher, observed, annotated = _batch()
    offset = logit_offset(class_prior(observed, annotated))
    assert offset[0] < 0 and (offset[1:] == 0).all()
    mask = annotated[None, :].expand_as(logits)
    lam = 0.3
    settings = {"kd_weight": lam, "ramp_begin": 0.0, "ramp_end": 0.0}  # λ_t = a from round 0
    clean = registry.create("fednoro", settings)
    official = registry.create("fednoro", {**settings, "variant": "official-code"})
    unadjusted = registry.create("fednoro", {**settings, "logit_adjust": False})
    assert clean.adjusts_logits and not official.adjusts_logits and not unadjusted.adjusts_logits
    kd_bce, kd_mse = kd_term(logits, teacher, ~mask, 0.8, "bce"), kd_term(logits, teacher, ~mask, 0.8, "mse")
    expected = {
        clean: (1 - lam) * supervised_term(logits, observed, mask, offset, False) + lam * kd_bce,
        unadjusted: (1 - lam) * supervised_term(logits, observed, mask, 0.0, False) + lam * kd_bce,
        official: (1 - lam) * supervised_term(logits, observed, mask, 0.0, True) + lam * kd_mse,
    }
    for method, value in expected.items():
        assert method.objective(logits, teacher, observed, annotated, offset, 0, 10).item() == pytest.approx(value.item())
    assert expected[clean].item() != pytest.approx(expected[unadjusted].item())
    # BCE on probabilities equals BCE on logits away from saturation
    on_probabilities = supervised_term(logits, observed, mask, 0.0, True)
    assert on_probabilities.item() == pytest.approx(supervised_term(logits, observed, mask, 0.0, False).item())


def test_a_client_without_missing_classes_trains_the_supervised_term_alone() -> None:
    logits, _, observed, _ = _batch()
    annotated = torch.ones(3, dtype=torch.bool)
    offset = logit_offset(class_prior(observed, annotated))
    clean, official = registry.create("fednoro"), registry.create("fednoro", {"variant": "official-code"})
    sup = supervised_term(logits, observed, torch.ones_like(logits, dtype=torch.bool), offset, False)
    assert clean.objective(logits, None, observed, annotated, offset, 9, 10).item() == pytest.approx(sup.item())
    lam = official.kd_lambda(9, 10)
    sup_p = supervised_term(logits, observed, torch.ones_like(logits, dtype=torch.bool), 0.0, True)
    assert official.objective(logits, None, observed, annotated, offset, 9, 10).item() == pytest.approx((1 - lam) * sup_p.item())


def _weights(shift: float) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor([shift, 0.0]), "b": torch.tensor([0.0]), "n": torch.tensor(7)}


def test_daagg_weights_from_model_distances() -> None:
    weights = [_weights(0.0), _weights(1.0), _weights(2.0)]
    assert model_distance(weights[0], weights[2]) == pytest.approx(2.0)
    shares = daagg_weights([1.0, 1.0, 2.0], [True, False, False], weights)
    raw = [1.0, math.exp(-0.5), 2 * math.exp(-1.0)]  # distances 0, 1, 2 normalised by 2
    assert shares == pytest.approx([r / sum(raw) for r in raw])
    assert daagg_weights([1.0, 3.0], [False, False], weights[:2]) == pytest.approx([0.25, 0.75])  # no clean client: FedAvg
    assert daagg_weights([1.0, 3.0], [True, True], weights[:2]) == pytest.approx([0.25, 0.75])


def test_server_uses_daagg_only_with_clean_and_noisy_clients_after_the_ramp_begins() -> None:
    updates = [Upload(i, 10, weights=_weights(float(i)), payload={"complete": i == 0}) for i in range(3)]
    method = registry.create("fednoro", {"ramp_begin": 0.2})
    late = method.aggregate(ServerContext(5, 10, None, [0, 1, 2], torch.Generator(), None), updates)
    shares = daagg_weights([10.0] * 3, [True, False, False], [u.weights for u in updates])
    assert late["a"][0].item() == pytest.approx(shares[1] * 1 + shares[2] * 2)
    assert method.server_gates() == {"daagg_max_weight": [max(shares)]}
    early = method.aggregate(ServerContext(1, 10, None, [0, 1, 2], torch.Generator(), None), updates)
    assert early["a"][0].item() == pytest.approx(1.0)  # before the ramp: FedAvg
    assert method.server_gates() == {}  # FedAvg: no gate
    official = registry.create("fednoro", {"ramp_begin": 0.2, "variant": "official-code"})
    server = ServerContext(5, 10, None, [0, 1, 2], torch.Generator(), None)
    assert official.aggregate(server, updates)["a"][0].item() == pytest.approx(1.0)  # official code: always FedAvg


@pytest.mark.parametrize("variant", ["clean", "official-code"])
def test_trains_end_to_end(store: ImageStore, federation: dict, variant: str) -> None:
    rt = runtime.resolve("cpu", "fp32", 1)
    result = federated.run(store, federation, registry.create("fednoro", {"variant": variant}), TRAIN, MODEL, 0, rt)
    assert [r.round for r in result.history] == [1, 2, 3]
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.test_mAP) for r in result.history)
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values() if v.is_floating_point())


def test_trains_end_to_end_with_a_client_annotating_every_class(store: ImageStore, federation: dict) -> None:
    partition = copy.deepcopy(federation)
    partition["clients"][0]["annotated_classes"] = list(store.classes)
    rt = runtime.resolve("cpu", "fp32", 1)
    two = dataclasses.replace(TRAIN, rounds=2)  # DaAgg from round 2 on (b = 0.04)
    daagg = federated.run(store, partition, registry.create("fednoro"), two, MODEL, 0, rt)
    fedavg = federated.run(store, partition, registry.create("fednoro", {"daagg": False}), two, MODEL, 0, rt)
    assert all(math.isfinite(r.train_loss) for r in daagg.history)
    assert [(g["round"], g["side"], g["gate"]) for g in daagg.gates] == [(2, "server", "daagg_max_weight")]
    assert 1 / len(partition["clients"]) <= daagg.gates[0]["rate"] <= 1 and fedavg.gates == []
    assert not all(torch.equal(a, b) for a, b in zip(daagg.model.state_dict().values(), fedavg.model.state_dict().values()))
