"""CBAFed's pieces on hand-made inputs, and the method end to end on the small store."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from gatelog import client_ids, client_rates

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.methods import registry
from fedmlp.methods.base import ServerContext
from fedmlp.methods.cbafed import (
    clean_loss,
    entry_counts,
    labelled_entries,
    official_loss,
    positive_counts,
    select_pseudo,
    thresholds,
    warmup_rounds,
)
from fedmlp.methods.common import UNLABELLED
from fedmlp.methods.messages import Upload
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
LOG2 = math.log(2)


def test_warmup_is_a_fraction_of_the_run_with_at_least_one_round() -> None:
    assert warmup_rounds(500, 0.1) == 50  # the published code's 50 of 500
    assert warmup_rounds(20, 0.1) == 2
    assert warmup_rounds(3, 0.1) == 1 and warmup_rounds(10, 0.0) == 1
    assert warmup_rounds(4, 1.0) == 4


def _one_class_clients(n: int, positives: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Equal clients, client k annotating class k only, with positives[k] positives."""
    out = []
    for k, pos in enumerate(positives):
        observed = torch.zeros(n, len(positives))
        observed[:pos, k] = 1
        out.append((observed, torch.arange(len(positives)) == k))
    return out


def test_clean_thresholds_follow_the_class_frequency_of_positives() -> None:
    clients = _one_class_clients(10, [2, 3, 5])
    none = torch.full((10, 3), UNLABELLED, dtype=torch.int8)
    counts = sum(positive_counts(observed, none) for observed, _ in clients)
    assert counts.tolist() == [2, 3, 5]
    tau = thresholds(counts, 0.45, 0.55, 0.95)
    spread = torch.tensor([0.2, 0.3, 0.5]).std().item()
    assert tau.tolist() == pytest.approx([0.55, 0.3 + 0.45 - spread, 0.5 + 0.45 - spread], abs=1e-6)  # the rarest is clipped
    assert tau[0] < tau[1] < tau[2]
    # pseudo-positives count too: client 0 pseudo-labels 5 positives of class 1
    pseudo = none.clone()
    pseudo[:5, 1] = 1
    pseudo[5:, 1] = 0  # pseudo-negatives do not count
    assert (positive_counts(clients[0][0], pseudo) + counts - positive_counts(clients[0][0], none)).tolist() == [2, 8, 5]


def test_official_thresholds_are_one_value_for_every_class() -> None:
    for n_classes, expected in [(3, 1 / 3 + 0.45), (5, 0.65), (8, 0.575)]:
        positives = [1 + 2 * k for k in range(n_classes)]  # very different frequencies of positives
        clients = _one_class_clients(20, positives)
        counts = sum(entry_counts(20, annotated) for _, annotated in clients)
        tau = thresholds(counts, 0.45, 0.55, 0.95)
        assert tau.tolist() == pytest.approx([expected] * n_classes)
        none = torch.full((20, n_classes), UNLABELLED, dtype=torch.int8)
        clean = thresholds(sum(positive_counts(observed, none) for observed, _ in clients), 0.45, 0.55, 0.95)
        assert len(set(clean.tolist())) > 1


def test_thresholds_of_no_counts_and_of_one_class() -> None:
    assert thresholds(torch.zeros(4), 0.45, 0.55, 0.95).tolist() == pytest.approx([0.7] * 4)
    assert thresholds(torch.tensor([3.0]), 0.84, 0.55, 0.95).tolist() == pytest.approx([0.95])


def test_pseudo_label_selection_from_known_probabilities() -> None:
    probabilities = torch.tensor([[0.9, 0.9, 0.9], [0.1, 0.1, 0.1], [0.5, 0.65, 0.75], [0.3, 0.35, 0.15]])
    missing = torch.tensor([False, True, True])
    tau = torch.tensor([0.6, 0.6, 0.8])
    pseudo = select_pseudo(probabilities, missing, tau)
    assert pseudo.dtype == torch.int8
    assert pseudo.tolist() == [[-1, 1, 1], [-1, 0, 0], [-1, 1, -1], [-1, 0, 0]]


def test_clean_loss_on_known_values() -> None:
    logits = torch.zeros(4, 3, requires_grad=True)
    observed = torch.tensor([[1.0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    annotated = torch.tensor([True, False, False])
    pseudo = torch.full((4, 3), UNLABELLED, dtype=torch.int8)
    pseudo[0, 1], pseudo[1, 2], pseudo[2, 2] = 1, 0, 1
    loss = clean_loss(logits, observed, annotated, torch.tensor([2.0, 1.0, 1.0]), pseudo)
    # annotated: (2 + 1 + 2 + 1) log 2 / 4; pseudo-labelled: three entries, pos_weight 1, log 2 each
    assert loss.item() == pytest.approx(1.5 * LOG2 + LOG2)
    loss.backward()
    assert (logits.grad[3, 1:] == 0).all() and (logits.grad[0, 2] == 0)  # unselected missing entries: no gradient
    none = torch.full((4, 3), UNLABELLED, dtype=torch.int8)
    assert clean_loss(logits, observed, annotated, torch.tensor([2.0, 1.0, 1.0]), none).item() == pytest.approx(1.5 * LOG2)


def test_official_loss_ratio_weights_and_per_class_sum() -> None:
    z = 2.0
    logits = torch.tensor([[0.0, z, z], [0.0, -z, 0.0], [0.0, 0.0, 0.0], [0.0, z, 0.0]])
    observed = torch.tensor([[1.0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    annotated = torch.tensor([True, False, False])
    loss, pseudo = official_loss(logits, observed, annotated, torch.tensor([2.0, 1.0, 1.0]), torch.tensor([0.6, 0.6, 0.6]))
    assert pseudo.tolist() == [[-1, 1, 1], [-1, 0, -1], [-1, -1, -1], [-1, 1, -1]]
    small = math.log1p(math.exp(-z))  # BCE of a confident correct prediction
    class1 = (1.5 * small * 2 + small) / 3  # S = {0, 1, 3}, 2 positives: pos_weight 3/2
    class2 = 1.0 * small  # S = {0}, one positive: pos_weight 1
    assert loss.item() == pytest.approx(1.5 * LOG2 + class1 + class2, rel=1e-5)


def _method(settings: dict | None = None):
    return registry.create("cbafed", settings or {})


def _server(round: int, total: int) -> ServerContext:
    return ServerContext(round, total, None, [0, 1], torch.Generator(), None)


def _upload(value: float, weight: float = 1.0) -> Upload:
    weights = {"w": torch.full((2,), value), "n": torch.tensor(int(value))}
    return Upload(0, 10, weights=weights, weight=weight, payload={"counts": torch.tensor([1.0, 3.0])})


def test_residual_mix_at_the_right_rounds() -> None:
    method = _method()  # warm-up 7 of 70 rounds, period 5
    out = {}
    for r in range(20):
        out[r] = method.aggregate(_server(r, 70), [_upload(float(r))])
    values = {r: out[r]["w"][0].item() for r in out}
    assert values[0] == 0 and all(values[r] == r for r in (1, 2, 3, 4, 6))
    assert values[5] == pytest.approx(0.2 * 5 + 0.8 * 0)  # warm-up mix, then kept
    assert values[7] == 7  # stage 2 starts: the kept model is reset to the average, no mix
    assert all(values[r] == r for r in (8, 9, 10, 11, 13))
    assert values[12] == pytest.approx(0.5 * 12 + 0.5 * 7)
    assert values[17] == pytest.approx(0.5 * 17 + 0.5 * values[12])
    assert out[12]["n"].item() == 12 and out[12]["n"].dtype == torch.int64  # integer buffers: the average's
    assert method.server.residual["w"][0].item() == pytest.approx(values[17])
    base = method.config.tau_base
    assert method.server.tau.tolist() == pytest.approx(thresholds(torch.tensor([1.0, 3.0]), base, 0.55, 0.95).tolist())
    assert method.broadcast_payload(_server(6, 70)) == {} and "tau" in method.broadcast_payload(_server(7, 70))


def test_server_state_round_trips_through_its_dict() -> None:
    method = _method()
    for r in range(6):
        method.aggregate(_server(r, 70), [_upload(float(r))])
    restored = _method()
    restored.load_state_dict(method.state_dict())
    a = method.aggregate(_server(6, 70), [_upload(6.0)])
    b = restored.aggregate(_server(6, 70), [_upload(6.0)])
    assert torch.equal(a["w"], b["w"]) and torch.equal(method.server.tau, restored.server.tau)


class _Client(SimpleNamespace):
    def __len__(self) -> int:
        return self.observed.shape[0]


def test_aggregation_weights_from_counts() -> None:
    annotated = torch.tensor([True, False, False])
    pseudo = torch.full((10, 3), UNLABELLED, dtype=torch.int8)
    pseudo[:3, 1], pseudo[5, 2] = 0, 1
    assert labelled_entries(10, annotated, pseudo) == 14.0  # 10 annotated entries + 4 pseudo-labelled
    client = _Client(annotated=annotated, observed=torch.zeros(10, 3))
    official_counts = entry_counts(6, annotated, pseudo[:6] != UNLABELLED) + entry_counts(4, annotated)  # two batches
    for variant, state in [("clean", {"pseudo": pseudo}), ("official-code", {"counts": official_counts})]:
        method = _method({"variant": variant})
        ctx = SimpleNamespace(round=5, total_rounds=10, client=client, state=state)
        assert method.aggregation_weight(ctx) == 14.0
        ctx.round = 0
        assert method.aggregation_weight(ctx) is None  # stage 1: by size
    counts = {"counts": torch.ones(2)}
    updates = [Upload(0, 10, weights={"w": torch.zeros(1)}, weight=14.0, payload=counts),
               Upload(1, 10, weights={"w": torch.ones(1)}, weight=6.0, payload=counts)]
    assert _method().aggregate(_server(8, 70), updates)["w"].item() == pytest.approx(6 / 20)


def _pseudo_rows(round_number: int, clients: list, states: list[dict]) -> list[dict]:
    return [{"round": round_number, "client": c.client_id, "labelled": int((s["pseudo"] != UNLABELLED).sum()),
             "on_annotated": int((s["pseudo"][:, c.annotated] != UNLABELLED).sum())} for c, s in zip(clients, states)]


@pytest.mark.parametrize("variant", ["clean", "official-code"])
def test_trains_end_to_end(store: ImageStore, federation: dict, variant: str) -> None:
    rt = runtime.resolve("cpu", "fp32", 1)
    # 1 warm-up round, a residual mix in round 3; thresholds near 0.5, which the barely trained model reaches
    method = _method({"variant": variant, "warmup_fraction": 0.34, "residual_period": 1, "tau_base": 0.0, "tau_min": 0.505})
    result = federated.run(store, federation, method, TRAIN, MODEL, 0, rt, on_round_end=_pseudo_rows)
    assert [r.round for r in result.history] == [1, 2, 3]
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.test_mAP) for r in result.history)
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values() if v.is_floating_point())
    rows = result.round_rows
    assert all(r["labelled"] == 0 for r in rows if r["round"] == 1)  # warm-up: no pseudo-labels
    assert sum(r["labelled"] for r in rows if r["round"] > 1) > 0
    assert all(r["on_annotated"] == 0 for r in rows)
    labelled = client_rates(result, "pseudo", [2, 3], client_ids(federation))  # stage 2 only
    positive = client_rates(result, "pseudo_positive", [2, 3], client_ids(federation))
    assert all(positive[key] <= rate for key, rate in labelled.items()) and max(labelled.values()) > 0
    assert method.server.tau is not None and method.server.tau.shape == (len(store.classes),)
    assert ((method.server.tau >= 0.505) & (method.server.tau <= 0.95)).all()
