"""FedLSM's pieces on hand-made inputs, its server step on hand-made uploads, and the method end to end
on the small store."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from gatelog import client_ids, client_rates
from hidden import permuted_labels

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.methods import registry
from fedmlp.methods.base import weighted_average
from fedmlp.methods.fedlsm import estimated_distribution, head_aggregate, mix, pools, targets_and_mask, uncertainty
from fedmlp.methods.messages import Upload
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
# A 3-round width-4 model's outputs stay within about 0.45-0.55: thresholds this narrow make its missing
# entries confident, so that the pseudo-label and MixUp paths run on the fixture store.
NARROW = {"threshold_high": 0.505, "threshold_low": 0.495, "mix_threshold_high": 0.505, "mix_threshold_low": 0.495}
MISSING = torch.tensor([False, True, True])  # class 0 annotated


def test_uncertainty_scores() -> None:
    p = torch.tensor([[0.9, 0.5, 0.5], [0.5, 0.99, 0.01], [0.5, 0.5, 0.99]])
    entropy = uncertainty(p, MISSING)
    h = -(0.99 * math.log(0.99) + 0.01 * math.log(0.01))
    assert entropy.tolist() == pytest.approx([math.log(2), h, (math.log(2) + h) / 2])  # the annotated column is ignored
    code = uncertainty(p, MISSING, "code")
    e = lambda x: -x * math.log(x)  # noqa: E731
    assert code.tolist() == pytest.approx([2 * e(0.5) / 3, (e(0.99) + e(0.01)) / 3, (e(0.5) + e(0.99)) / 3])
    assert not uncertainty(p, torch.zeros(3, dtype=torch.bool)).any()


def test_pools_take_the_extremes_and_are_disjoint() -> None:
    scores = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.0, 0.7, 0.2, 0.8, 0.4, 0.6])
    u, cf = pools(scores, 0.2, 0.3)
    assert u.tolist() == [1, 7]  # the two highest
    assert cf.tolist() == [2, 4, 6]  # the three lowest
    u, cf = pools(scores, 0.5, 0.5)
    assert set(u.tolist()).isdisjoint(cf.tolist()) and len(u) + len(cf) == 10
    u, cf = pools(scores[:3], 0.05, 0.2)
    assert len(u) == 1 and len(cf) == 1  # at least one image for a non-zero share
    assert [len(x) for x in pools(scores, 0.0, 0.0)] == [0, 0]


def test_targets_mask_and_edd() -> None:
    p = torch.tensor([[0.9, 0.86, 0.5], [0.1, 0.005, 0.85], [0.5, 0.5, 0.02]])
    observed = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    annotated = ~MISSING
    targets, mask = targets_and_mask(p, observed, annotated, 0.85, 0.01)
    assert mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert targets[mask].tolist() == [1, 1, 0, 0, 1, 1]  # observed on class 0, hardened teacher on the others
    # EDD: observed positives of the annotated class, p ≥ 0.85 on the missing ones
    assert estimated_distribution(p, observed, annotated, 0.85).tolist() == [2, 1, 1]


def test_mixup_mixes_inputs_and_targets_and_ands_the_masks() -> None:
    x_u, x_c = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    t_u, t_c = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    m_u, m_c = torch.tensor([[True, False], [True, True]]), torch.tensor([[True, True], [False, True]])
    x, t, m = mix(0.25, x_u, x_c, t_u, t_c, m_u, m_c)
    assert torch.allclose(x, torch.full_like(x, 0.75))
    assert t.tolist() == [[0.25, 0.0], [0.75, 1.0]]
    assert m.tolist() == [[True, False], [False, True]]


def _upload(client: int, n: int, edd: list[float], annotated: list[bool], generator: torch.Generator) -> Upload:
    weights = {"backbone.0.weight": torch.randn(4, 3, generator=generator), "head.weight": torch.randn(3, 4, generator=generator),
               "head.bias": torch.randn(3, generator=generator), "backbone.1.num_batches_tracked": torch.tensor(client)}
    return Upload(client, n, weights, payload={"edd": torch.tensor(edd), "annotated": torch.tensor(annotated)})


def test_head_rows_weighted_by_edd_equal_fedavg_when_edd_is_proportional_to_size() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [10, 30, 60]
    updates = [_upload(k, n, [n * 0.2, n * 0.5, n * 0.1], [k == 0, k == 1, k == 2], g) for k, n in enumerate(sizes)]
    previous = {"head.weight": torch.zeros(3, 4), "head.bias": torch.zeros(3)}
    merged, fedavg = head_aggregate(updates, previous), weighted_average(updates)
    for key in fedavg:
        assert torch.allclose(merged[key].double(), fedavg[key].double(), atol=1e-6), key


def test_head_rows_follow_the_counts_and_fall_back() -> None:
    g = torch.Generator().manual_seed(1)
    # class 0: counted by client 1 only; class 1: no counts, annotated by clients 0 and 2; class 2: nobody
    updates = [_upload(0, 10, [0, 0, 0], [False, True, False], g), _upload(1, 20, [5, 0, 0], [True, False, False], g),
               _upload(2, 30, [0, 0, 0], [False, True, False], g)]
    previous = {"head.weight": torch.full((3, 4), 7.0), "head.bias": torch.full((3,), 7.0)}
    merged = head_aggregate(updates, previous)
    fedavg = weighted_average(updates)
    for key in ("head.weight", "head.bias"):
        rows = [u.weights[key] for u in updates]
        assert torch.allclose(merged[key][0], rows[1][0])  # only client 1 counts class 0
        assert torch.allclose(merged[key][1], (10 * rows[0][1] + 30 * rows[2][1]) / 40)  # n_k over annotating clients
        assert torch.equal(merged[key][2], previous[key][2])  # the previous global row
    assert torch.equal(merged["backbone.0.weight"], fedavg["backbone.0.weight"])  # the backbone is FedAvg
    assert torch.equal(merged["backbone.1.num_batches_tracked"], fedavg["backbone.1.num_batches_tracked"])


def test_bad_settings_name_their_key() -> None:
    with pytest.raises(FedmlpError, match="fedlsm.threshold_high"):
        registry.create("fedlsm", {"threshold_high": 0.4})
    with pytest.raises(FedmlpError, match="fedlsm.score"):
        registry.create("fedlsm", {"score": "variance"})


def _run(store: ImageStore, federation: dict, settings: dict) -> federated.RunResult:
    rt = runtime.resolve("cpu", "fp32", 1)
    return federated.run(store, federation, registry.create("fedlsm", settings), TRAIN, MODEL, 0, rt)


@pytest.mark.parametrize("settings", [{}, NARROW])
def test_fedlsm_trains_and_records_the_confident_share(store: ImageStore, federation: dict, settings: dict) -> None:
    result = _run(store, federation, settings)
    rates = client_rates(result, "confident", [1, 2, 3], client_ids(federation))
    assert all(math.isfinite(r.train_loss) and math.isfinite(r.test_mAP) for r in result.history)
    assert all(torch.isfinite(v).all() for v in result.model.state_dict().values() if v.is_floating_point())
    if settings:
        assert max(rates.values()) > 0


def test_awpa_changes_the_head_only_through_the_server_step(store: ImageStore, federation: dict) -> None:
    short = TrainConfig(rounds=1, batch_size=8, precision="fp32", device="cpu")
    rt = runtime.resolve("cpu", "fp32", 1)
    awpa = federated.run(store, federation, registry.create("fedlsm", NARROW), short, MODEL, 0, rt).model
    plain = federated.run(store, federation, registry.create("fedlsm", {**NARROW, "awpa": False}), short, MODEL, 0, rt).model
    assert torch.equal(awpa.backbone[0].weight, plain.backbone[0].weight)  # same local training, FedAvg backbone
    assert not torch.equal(awpa.head.weight, plain.head.weight)


def test_hidden_labels_do_not_influence_the_pseudo_label_path(store: ImageStore, federation: dict) -> None:
    """The contract suite's permutation check, with thresholds at which pseudo-labels and MixUp act."""
    shuffled = permuted_labels(store, federation, seed=0)  # tests/hidden.py
    original = _run(store, federation, NARROW)
    assert min(r["rate"] for r in original.gates if r["gate"] == "confident") > 0
    permuted = _run(dataclasses.replace(store, labels=shuffled), federation, NARROW)
    for a, b in zip(original.model.state_dict().values(), permuted.model.state_dict().values()):
        assert torch.equal(a, b)
