"""FedLSR's pieces on hand-made inputs, and the method end to end on the small store."""

from __future__ import annotations

import math

import pytest
import torch

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.methods import registry
from fedmlp.methods.fedlsr import (
    binary_entropy,
    distill_weight,
    fit_loss,
    js_bernoulli,
    js_official,
    mixed_prediction,
    ramp_rounds,
    sharpen,
)
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)


def test_sharpen_fixes_0_half_1_and_pushes_away_from_half() -> None:
    assert sharpen(torch.tensor([0.0, 0.5, 1.0])).tolist() == [0.0, 0.5, 1.0]
    assert sharpen(torch.tensor([0.75, 0.25])).tolist() == pytest.approx([0.9, 0.1])  # .5625 / (.5625 + .0625)
    p = torch.tensor([0.1, 0.3, 0.6, 0.8])
    assert torch.allclose(sharpen(p), torch.sigmoid(2 * torch.logit(p)))  # the published code's form, T = 1/2
    assert sharpen(torch.tensor([0.75]), temperature=1.0).item() == pytest.approx(0.75)
    saturated = torch.tensor([0.0, 1.0], requires_grad=True)
    sharpen(saturated).sum().backward()
    assert torch.isfinite(saturated.grad).all()


def test_mixed_prediction() -> None:
    z1, z2 = torch.tensor([[0.0, 10.0]]), torch.tensor([[math.log(3), -10.0]])  # σ: 0.5 / 0.75
    assert mixed_prediction(z1, z2, 0.25)[0, 0].item() == pytest.approx(0.25 * 0.5 + 0.75 * 0.75)
    assert torch.allclose(mixed_prediction(z1, z2, 1.0), torch.sigmoid(z1))


def test_js_bernoulli_zero_symmetric_and_a_hand_computed_value() -> None:
    q = torch.tensor([[0.1, 0.7, 0.999], [0.5, 0.3, 0.02]])
    assert js_bernoulli(q, q).item() == pytest.approx(0.0, abs=1e-7)
    other = torch.tensor([[0.4, 0.2, 0.6], [0.9, 0.3, 0.5]])
    assert js_bernoulli(q, other).item() == pytest.approx(js_bernoulli(other, q).item())
    assert js_bernoulli(q, other).item() > 0
    # one entry, q1 = 0.2, q2 = 0.6, mean 0.4
    kl1 = 0.2 * math.log(0.2 / 0.4) + 0.8 * math.log(0.8 / 0.6)
    kl2 = 0.6 * math.log(0.6 / 0.4) + 0.4 * math.log(0.4 / 0.6)
    expected = (kl1 + kl2) / 2
    assert expected == pytest.approx(0.086305, abs=1e-6)
    assert js_bernoulli(torch.tensor([[0.2]]), torch.tensor([[0.6]])).item() == pytest.approx(expected, rel=1e-5)
    # summed over classes, averaged over the batch: two classes and two identical rows give 2 × the value
    pair = js_bernoulli(torch.tensor([[0.2, 0.6]] * 2), torch.tensor([[0.6, 0.2]] * 2))
    assert pair.item() == pytest.approx(2 * expected, rel=1e-5)
    # the clamp keeps saturated probabilities finite
    assert torch.isfinite(js_bernoulli(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])))


def test_official_js_differs_from_the_bernoulli_one() -> None:
    q1, q2 = torch.tensor([[0.2]]), torch.tensor([[0.6]])
    hand = (0.2 * math.log(0.2 / 0.4) + 0.6 * math.log(0.6 / 0.4)) / 2  # no (1 − q) terms
    assert js_official(q1, q2).item() == pytest.approx(hand, rel=1e-5)
    assert js_official(q1, q2).item() != pytest.approx(js_bernoulli(q1, q2).item(), rel=0.05)
    # averaged over all entries, not summed over classes: two copies of the class give the same value
    assert js_official(q1.repeat(1, 2), q2.repeat(1, 2)).item() == pytest.approx(hand, rel=1e-5)
    assert js_official(q1, q1).item() == pytest.approx(0.0, abs=1e-7)


def test_ramp_of_the_distillation_weight() -> None:
    assert ramp_rounds(0.2, 500) == 100 and ramp_rounds(40 / 500, 500) == 40  # original and published code
    assert ramp_rounds(0.2, 20) == 4 and ramp_rounds(40 / 500, 20) == 2
    assert ramp_rounds(0.01, 20) == 1 and ramp_rounds(0.0, 20) == 0
    assert [distill_weight(t, 4, 0.4) for t in range(6)] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])
    assert distill_weight(0, 0, 0.4) == 0.4


def test_fit_loss_clean_and_double_sigmoid() -> None:
    p = torch.tensor([[0.9, 0.9]], requires_grad=True)
    y = torch.tensor([[1.0, 0.0]])
    clean = fit_loss(p, y, None, double_sigmoid=False)
    assert clean.item() == pytest.approx((-math.log(0.9) - math.log(0.1)) / 2, rel=1e-6)
    weighted = fit_loss(p, y, torch.tensor([3.0, 3.0]), double_sigmoid=False)
    assert weighted.item() == pytest.approx((-3 * math.log(0.9) - math.log(0.1)) / 2, rel=1e-6)  # y = 0 unweighted
    official = fit_loss(p, y, None, double_sigmoid=True)
    s = 1 / (1 + math.exp(-0.9))
    assert official.item() == pytest.approx((-math.log(s) - math.log(1 - s)) / 2, rel=1e-6)
    # the second sigmoid squashes the gradient: on the wrong negative, 1/(1 − p) = 10 against σ(p) ≈ 0.71
    (grad_clean,) = torch.autograd.grad(clean, p)
    (grad_official,) = torch.autograd.grad(official, p)
    assert grad_clean[0, 1].item() == pytest.approx(10 / 2, rel=1e-4)
    assert grad_official[0, 1].item() == pytest.approx(s / 2, rel=1e-4)


def test_binary_entropy_from_logits() -> None:
    z = torch.tensor([0.0, 2.0, -3.0, 80.0])
    p = torch.sigmoid(z[:3])
    assert binary_entropy(z)[0].item() == pytest.approx(math.log(2))
    assert binary_entropy(z)[:3].tolist() == pytest.approx((-(p * p.log()) - (1 - p) * (1 - p).log()).tolist(), rel=1e-5)
    assert binary_entropy(z)[3].item() == pytest.approx(0.0, abs=1e-6)


def test_bad_setting_is_named() -> None:
    with pytest.raises(FedmlpError, match="fedlsr.variant"):
        registry.create("fedlsr", {"variant": "paper"})
    with pytest.raises(FedmlpError, match="fedlsr.sharpen_temperature"):
        registry.create("fedlsr", {"sharpen_temperature": 2})


VARIANTS = [{}, {"variant": "official-code"}, {"entropy_reg": True, "pos_weight": True, "ramp_fraction": 0}]


@pytest.mark.parametrize("settings", VARIANTS)
def test_fedlsr_trains_and_is_finite(store: ImageStore, federation: dict, settings: dict) -> None:
    rt = runtime.resolve("cpu", "fp32", 1)
    start = federated.init_model(MODEL, len(store.classes), 0, rt)
    result = federated.run(store, federation, registry.create("fedlsr", settings), TRAIN, MODEL, 0, rt)
    assert len(result.history) == 3
    assert result.gates == []  # FedLSR trains every entry every round: no gate
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.test_mAP) for r in result.history)
    weights = result.model.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert any(not torch.equal(weights[k], v) for k, v in start.state_dict().items() if v.is_floating_point())


def test_variants_train_differently(store: ImageStore, federation: dict) -> None:
    rt = runtime.resolve("cpu", "fp32", 1)
    short = TrainConfig(rounds=2, batch_size=8, precision="fp32", device="cpu")
    clean = federated.run(store, federation, registry.create("fedlsr", {}), short, MODEL, 0, rt)
    official = federated.run(store, federation, registry.create("fedlsr", {"variant": "official-code"}), short, MODEL, 0, rt)
    assert clean.history[-1].train_loss != official.history[-1].train_loss
    assert not torch.equal(clean.model.head.weight, official.model.head.weight)
