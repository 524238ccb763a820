"""Large Loss Matters (LL-R, LL-Ct): its schedule, budget, selection and loss on hand-made inputs,
and the methods end to end on the small store (rate 0 is fedavg-partial, bit for bit)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from gatelog import client_ids, client_rates

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.methods import registry
from fedmlp.methods.largeloss import budget, large_loss_mask, treat, treated_rate
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
MISSING = torch.tensor([False, True, True])  # class 0 annotated, classes 1 and 2 missing


def test_with_as_many_rounds_as_epochs_the_rate_is_the_papers() -> None:
    # the paper: ρ = (t − 1) · δ in epoch t (1-based), δ = delta_rel / 100
    assert [treated_rate(r, 10, 0.4, 10) for r in range(10)] == pytest.approx([r * 0.004 for r in range(10)])


def test_the_schedule_is_stretched_over_the_run() -> None:
    rates = [treated_rate(r, 20, 0.4, 10) for r in range(20)]
    assert rates[:2] == [0.0, 0.0]  # ⌈20 / 10⌉ rounds: the paper's first epoch
    assert rates[-1] == pytest.approx(9 * 0.004)  # the paper's last-epoch rate at the last round
    steps = [b - a for a, b in zip(rates[1:], rates[2:])]
    assert steps == pytest.approx([0.002] * 18)  # 9 δ over 18 rounds: half the paper's step per round
    assert treated_rate(0, 1, 0.4, 10) == 0.0  # a one-round run is all warm-up
    assert treated_rate(5, 6, 100.0, 10) == 1.0  # capped at every entry


def test_budget_is_a_share_of_all_entries_capped_at_the_missing_ones() -> None:
    assert budget(0.0, 8, 5, 4) == 0
    assert budget(0.036, 32, 5, 4) == math.ceil(0.036 * 32 * 5) == 6
    assert budget(0.9, 8, 5, 2) == 16  # ⌈0.9 · 40⌉ = 36 > B · |M| = 16
    assert budget(0.5, 8, 5, 0) == 0  # nothing missing, nothing treated


LOSSES = torch.tensor([[9.0, 0.5, 3.0], [8.0, 2.0, 1.0], [7.0, 3.0, 0.1]])


def test_the_largest_missing_losses_are_treated_and_ties_with_the_kth_too() -> None:
    mask = large_loss_mask(LOSSES, MISSING, 1)
    assert mask.tolist() == [[False, False, True], [False, False, False], [False, True, False]]  # k = 1, but two entries tie at 3.0
    assert large_loss_mask(LOSSES, MISSING, 3).tolist() == [[False, False, True], [False, True, False], [False, True, False]]
    assert not large_loss_mask(LOSSES, MISSING, 0).any()
    everything = large_loss_mask(LOSSES, MISSING, 100)  # never an annotated entry, even with a budget above |U|
    assert everything.tolist() == [[False, True, True]] * 3
    assert not large_loss_mask(LOSSES, torch.zeros(3, dtype=torch.bool), 2).any()


def test_rejection_and_correction_on_known_logits() -> None:
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, -2.0, 3.0]])
    observed = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    bce = F.binary_cross_entropy_with_logits(logits, observed, reduction="none")
    treated = torch.zeros(2, 3, dtype=torch.bool)
    treated[1, 2] = True  # the largest missing loss, log(1 + e³)
    kept_sum = bce.sum() - bce[1, 2]
    assert treat(bce, logits, observed, treated, correct=False).item() == pytest.approx((kept_sum / 6).item())
    assert treat(bce, logits, observed, treated, correct=False, normalisation="kept").item() == pytest.approx((kept_sum / 5).item())
    flipped = math.log1p(math.exp(-3.0))  # BCE(3, 1)
    assert treat(bce, logits, observed, treated, correct=True).item() == pytest.approx(((kept_sum + flipped) / 6).item())
    # the flipped entry's gradient pushes its logit up, the rejected one's is 0
    for correct, sign in ((True, -1), (False, 0)):
        z = logits.clone().requires_grad_(True)
        loss = treat(F.binary_cross_entropy_with_logits(z, observed, reduction="none"), z, observed, treated, correct)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.sign(grad[1, 2]).item() == sign
        assert grad[1, 1].item() > 0  # an untreated missing entry is still pushed towards 0


def test_bad_settings_name_their_key() -> None:
    with pytest.raises(FedmlpError, match="largeloss.delta_rel_r"):
        registry.create("ll-r", {"delta_rel_r": -0.1})
    with pytest.raises(FedmlpError, match="largeloss.schedule_epochs"):
        registry.create("ll-ct", {"schedule_epochs": 1})
    with pytest.raises(FedmlpError, match="largeloss.normalisation"):
        registry.create("ll-r", {"normalisation": "some"})


def _run(store: ImageStore, federation: dict, name: str, settings: dict | None = None) -> federated.RunResult:
    return federated.run(store, federation, registry.create(name, settings), TRAIN, MODEL, 0, runtime.resolve("cpu", "fp32", 1))


@pytest.mark.parametrize(("name", "key"), [("ll-r", "delta_rel_r"), ("ll-ct", "delta_rel_ct")])
def test_rate_zero_is_fedavg_partial_bit_for_bit(store: ImageStore, federation: dict, name: str, key: str) -> None:
    reference = _run(store, federation, "fedavg-partial").model.state_dict()
    zero = _run(store, federation, name, {key: 0.0})
    assert all(torch.equal(v, reference[k]) for k, v in zero.model.state_dict().items())
    rates = client_rates(zero, "flipped" if name == "ll-ct" else "rejected", [1, 2, 3], client_ids(federation))
    assert set(rates.values()) == {0.0}


@pytest.mark.parametrize(("name", "gate"), [("ll-r", "rejected"), ("ll-ct", "flipped")])
def test_treats_missing_entries_from_the_second_round_on(store: ImageStore, federation: dict, name: str, gate: str) -> None:
    result = _run(store, federation, name)
    rates = client_rates(result, gate, [1, 2, 3], client_ids(federation))
    assert all(rate == 0.0 for (round_number, _), rate in rates.items() if round_number == 1)  # ⌈3 / 10⌉ warm-up round
    assert all(rate > 0 for (round_number, _), rate in rates.items() if round_number > 1)
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.test_mAP) for r in result.history)
    reference = _run(store, federation, "fedavg-partial").model.state_dict()
    assert any(not torch.equal(v, reference[k]) for k, v in result.model.state_dict().items() if v.is_floating_point())
