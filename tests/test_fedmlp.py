"""FedMLP's pieces on hand-made inputs, and the method end to end on the small store."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gatelog import client_ids, client_rates

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.methods import registry
from fedmlp.methods.base import broadcast_of
from fedmlp.methods.fedmlp import (
    UNLABELLED,
    ThresholdConfig,
    adaptive_fraction,
    aggregate_degrees,
    aggregate_prototypes,
    class_prior,
    detection_scores,
    floor_count,
    global_prior,
    label_counts,
    learning_degrees,
    logit_offset,
    oracle_targets,
    prototypes,
    select,
    stage2_targets,
)
from fedmlp.methods.messages import Upload
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=4, batch_size=8, precision="fp32", device="cpu")  # SHORT: 2 warm-up + 2 stage-2 rounds
MODEL = ModelConfig(width=4)
SHORT = {"warmup_rounds": 2, "tau0": {"min": 0.2, "max": 0.6, "fixed": 0.1}, "tau1": {"min": 0.2, "max": 0.6, "fixed": 0.1}}


def test_class_prior_and_offset() -> None:
    observed = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    prior = class_prior(observed, torch.tensor([True, False]))
    assert prior.tolist() == pytest.approx([(2 + 1) / (4 + 2), 0.5])
    assert logit_offset(prior).tolist() == pytest.approx([0.0, 0.0])
    skewed = class_prior(torch.zeros(8, 1), torch.tensor([True]))
    assert skewed.item() == pytest.approx(1 / 10) and logit_offset(skewed).item() == pytest.approx(math.log(1 / 9))


def test_prototypes_are_class_conditional_means() -> None:
    features = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 4.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    protos, counts = prototypes(features, labels, torch.tensor([True, False]))
    assert protos[0, 1].tolist() == [2.0, 0.0]  # class 0, label 1: mean of rows 0 and 2
    assert protos[0, 0].tolist() == [0.0, 3.0]  # class 0, label 0: rows 1 and 3
    assert counts.tolist() == [[2.0, 2.0], [0.0, 0.0]]  # class 1 is not annotated: undefined
    assert protos[1].abs().sum() == 0


def test_learning_degrees() -> None:
    probabilities = torch.tensor([[0.1, 0.5, 0.9], [0.9, 0.6, 0.9], [0.5, 0.2, 0.9]])
    degrees = learning_degrees(probabilities, torch.tensor([True, True, False]), 0.3, 0.7)
    assert degrees[:2].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert math.isnan(degrees[2])


def test_global_prior_pools_the_annotating_clients_counts() -> None:
    """π_c = (Σ positives + 1) / (Σ N_k + 2) over the clients that annotate c: the warm-up's smoothed
    prior for one client, pooled; 0.5 for a class nobody annotates."""
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # annotates class 0
    b = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # annotates classes 0 and 1
    counts = [label_counts(a, torch.tensor([True, False, False])), label_counts(b, torch.tensor([True, True, False]))]
    assert counts[0].tolist() == [[2.0, 2.0], [0.0, 0.0], [0.0, 0.0]] and counts[1].tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert global_prior(counts).tolist() == pytest.approx([(3 + 1) / (6 + 2), (1 + 1) / (2 + 2), 0.5])
    one = torch.tensor([True, False, False])
    assert torch.equal(global_prior([label_counts(a, one)])[one], class_prior(a, one)[one])  # the same smoothing

    method = registry.create("fedmlp", {**SHORT, "degree_scale": "prior"})
    method.server_census(None, [Upload(0, 4, payload={"counts": counts[0]}), Upload(1, 2, payload={"counts": counts[1]})])
    assert torch.equal(method.server.prior, global_prior(counts))


def test_aggregation_weights_by_client_size_over_defined_entries() -> None:
    a = (torch.ones(2, 2, 3), torch.tensor([[5.0, 5.0], [0.0, 0.0]]))  # client a: class 1 undefined
    b = (torch.full((2, 2, 3), 5.0), torch.tensor([[1.0, 1.0], [2.0, 2.0]]))
    merged, defined = aggregate_prototypes([a, b], sizes=[1, 3])
    assert merged[0, 0].tolist() == pytest.approx([4.0] * 3)  # (1·1 + 3·5) / 4
    assert merged[1, 1].tolist() == pytest.approx([5.0] * 3)  # only client b defines class 1
    assert defined.all()
    degrees = aggregate_degrees([torch.tensor([0.2, float("nan"), float("nan")]), torch.tensor([0.6, 0.5, float("nan")])], sizes=[3, 1])
    assert degrees[0].item() == pytest.approx((3 * 0.2 + 0.6) / 4)
    assert degrees[1].item() == pytest.approx(0.5) and math.isnan(degrees[2])


def test_detection_picks_the_right_indices() -> None:
    # class 0: negative prototype along x, positive along y
    protos = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    features = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.5], [0.2, 1.0], [1.0, 0.0], [0.0, 1.0]])
    scores = detection_scores(features, protos)[:, 0]
    assert (scores[[0, 2, 4]] > 0).all() and (scores[[1, 3, 5]] < 0).all()
    negatives, positives = select(scores, torch.ones(6, dtype=torch.bool), fraction0=2 / 3, fraction1=1 / 3)
    assert negatives.tolist() == [0, 4]  # the two most negative-looking of {0, 2, 4}
    assert positives.tolist() == [5]  # the most positive-looking of {1, 3, 5}
    eligible = torch.tensor([True, True, True, True, False, False])
    negatives, positives = select(scores, eligible, fraction0=0.5, fraction1=1.0)
    assert negatives.tolist() == [0] and positives.tolist() == [1, 3]


def test_adaptive_fraction_is_monotone_and_bounded() -> None:
    bounds = ThresholdConfig(min=0.05, max=0.4, fixed=0.01)
    grid = np.linspace(0, 1, 11)
    values = np.array([[adaptive_fraction(a, b, bounds) for b in grid] for a in grid])
    assert values.min() >= bounds.min and values.max() <= bounds.max
    assert values[0, 0] == pytest.approx(bounds.min) and values[-1, -1] == pytest.approx(bounds.max)
    assert (np.diff(values, axis=0) >= -1e-12).all() and (np.diff(values, axis=1) >= -1e-12).all()


@pytest.mark.parametrize("variant", ["paper", "official-code"])
def test_stage2_masks_are_disjoint_and_cover_missing_entries(variant: str) -> None:
    annotated = torch.tensor([True, False, False, True, False])
    combos = list(itertools.product([UNLABELLED, 0, 1], repeat=3))
    pseudo = torch.full((len(combos), 5), UNLABELLED, dtype=torch.int8)
    pseudo[:, [1, 2, 4]] = torch.tensor(combos, dtype=torch.int8)
    observed = torch.zeros(len(combos), 5)
    observed[:, 0] = 1
    targets, bce, cr = stage2_targets(observed, annotated, pseudo, variant)
    missing = ~annotated.expand_as(bce)
    assert bce[:, annotated].all() and not cr[:, annotated].any()  # annotated entries: supervised
    assert not (bce & cr).any()  # disjoint
    assert torch.equal(targets[:, annotated], observed[:, annotated])
    labelled = missing & (pseudo != UNLABELLED)
    if variant == "paper":
        assert torch.equal((bce | cr) & missing, missing)  # every missing entry is covered
        assert torch.equal(bce & missing, labelled) and torch.equal(targets[labelled], pseudo[labelled].float())
    else:
        assert not cr.any()
        assert torch.equal(bce & missing, labelled)  # unselected missing entries are left out
        assert torch.equal(targets[labelled], pseudo[labelled].float())  # pseudo-negatives trained as 0


def test_official_stage2_loss_on_a_constructed_batch() -> None:
    """The published code's stage 2: one view, no logit adjustment, BCE on annotated entries and on
    the selected missing entries of both polarities, unselected missing entries and the teacher unused."""
    method = registry.create("fedmlp-official", {"warmup_rounds": 1})
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [-0.5, 1.5, -2.0, 0.0], [1.0, 0.0, 0.25, -1.0]], requires_grad=True)
    calls = []

    class Ctx:
        round = 1  # stage 2
        state = {"offset": torch.full((4,), 7.0),  # would change the loss if logit adjustment were applied
                 "pseudo": torch.tensor([[-1, 0, -1, -1], [-1, 1, 0, -1], [-1, -1, -1, -1]], dtype=torch.int8)}

        @staticmethod
        def augment(images, policy="weak"):
            calls.append(policy)
            return images

        model = staticmethod(lambda images: logits[: len(images)])
        teacher = staticmethod(lambda images: pytest.fail("the teacher must not be used"))

    batch = type("B", (), {"images": torch.zeros(3, 1, 2, 2), "observed": torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]),
                           "annotated": torch.tensor([True, False, False, False]), "positions": torch.arange(3)})
    loss = method.loss(Ctx, batch)
    assert calls == ["weak"]  # one view
    entries = [(0, 0, 1.0), (1, 0, 0.0), (2, 0, 1.0), (0, 1, 0.0), (1, 1, 1.0), (1, 2, 0.0)]  # annotated, then selected
    expected = torch.stack([F.binary_cross_entropy_with_logits(logits[i, c], torch.tensor(t)) for i, c, t in entries]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_official_counts_with_floor_ours_rounds() -> None:
    scores = torch.linspace(1, 0.1, 10)  # ten negative candidates
    eligible = torch.ones(10, dtype=torch.bool)
    assert len(select(scores, eligible, 0.15, 0.0)[0]) == 2  # round(1.5) = 2
    assert len(select(scores, eligible, 0.15, 0.0, floor_count)[0]) == 1  # int(1.5) = 1


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [v.clone() for v in model.state_dict().values()]


def _zero_head_site(store: ImageStore, federation: dict, settings: dict) -> tuple[federated.Site, torch.nn.Module]:
    """A Site over the fixture's clients whose model's logits are all exactly 0."""
    rt = runtime.resolve("cpu", "fp32", 1)
    method = registry.create("fedmlp", settings)
    model = federated.init_model(MODEL, len(store.classes), 0, rt)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return federated.Site(method, federated.build_clients(store, federation, method), store, TRAIN, rt, 0, model), model


def test_prior_scale_degrees_on_constructed_logits(store: ImageStore, federation: dict) -> None:
    """Logits all 0: raw σ(0) = 0.5 is never confident (degree 0); with a global prior of 0.2,
    σ(0 + log(0.2/0.8)) = 0.2 < L = 0.3 on every image (degree 1), and 0.9 gives 0.9 > U (degree 1);
    a prior of 0.5 (no offset) gives raw's degrees bit for bit."""
    C = len(store.classes)
    degrees = {}
    for scale, prior in (("raw", None), ("prior", 0.2), ("prior", 0.9), ("prior", 0.5)):
        site, model = _zero_head_site(store, federation, {**SHORT, "degree_scale": scale})
        payload = {} if prior is None else {"prior": torch.full((C,), prior)}
        uploads = [site.prepare(cid, broadcast_of(2, model, payload)) for cid in sorted(site.clients)]
        degrees[scale, prior] = torch.stack([u.payload["degree"] for u in uploads])
    missing = ~torch.isnan(degrees["raw", None])
    assert missing.any() and (degrees["raw", None][missing] == 0).all()
    assert (degrees["prior", 0.2][missing] == 1).all() and (degrees["prior", 0.9][missing] == 1).all()
    assert torch.equal(torch.isnan(degrees["prior", 0.2]), ~missing)  # NaN on annotated classes, as raw
    assert torch.equal(degrees["prior", 0.5].nan_to_num(-1), degrees["raw", None].nan_to_num(-1))


def test_census_only_with_prior_scale_and_once(store: ImageStore, federation: dict) -> None:
    """raw: no census, no prior in any broadcast or the artifact (today's exchanges). prior: one census
    before the first stage-2 round's prepare; its counts are the prototypes' counts."""
    rt = runtime.resolve("cpu", "fp32", 1)
    for scale in ("raw", "prior"):
        site, model = _zero_head_site(store, federation, {**SHORT, "degree_scale": scale})
        method = site.method
        requests: list[dict] = []

        def answer(ids, broadcast, site=site, requests=requests):
            requests.append(dict(broadcast.payload))
            return [site.prepare(i, broadcast) for i in ids]

        ids = sorted(site.clients)
        assert not method.census(1)  # a warm-up round
        for round_index in (2, 3):
            server = federated.server_context(method, TRAIN, model, ids, round_index, 0, rt)
            broadcast = federated.exchange(method, server, model, answer)
            assert ("prior" in broadcast.payload) == (scale == "prior")
        census = [r for r in requests if r.get("census") is True]
        assert len(census) == (scale == "prior") and len(requests) == 2 + len(census)
        if scale == "prior":
            assert requests[0] == {"census": True} and "prior" in requests[1]
            counts = [label_counts(c.observed, c.annotated) for c in site.clients.values()]
            assert torch.equal(method.server.prior, global_prior(counts))
        artifact = method.export(list(site.clients.values()), site.state_list(), store)
        assert ("global_prior" in artifact) == (scale == "prior")


@pytest.mark.parametrize("scale", ["raw", "prior"])
def test_staged_run_equals_one_shot_run(store: ImageStore, federation: dict, scale: str) -> None:
    """warmup → checkpoint → pseudolabel export → teacher reproduces the uninterrupted run exactly
    (with degree_scale prior, the artifact's global prior stands in for the census)."""
    settings = {**SHORT, "degree_scale": scale}
    rt = runtime.resolve("cpu", "fp32", 1)
    whole = federated.run(store, federation, registry.create("fedmlp", settings), TRAIN, MODEL, 3, rt)

    stage1 = registry.create("fedmlp", settings)
    warm = federated.run(store, federation, stage1, TRAIN, MODEL, 3, rt, rounds=range(2)).model
    detector = registry.create("fedmlp", settings)
    site = federated.start_round(store, federation, detector, TRAIN, rt, 3, warm, 2)
    artifact = json.loads(json.dumps(detector.export(list(site.clients.values()), site.state_list(), store)))  # as written
    assert sum(len(v["pseudo_positive"]) + len(v["pseudo_negative"]) for c in artifact["clients"] for v in c["classes"].values()) > 0
    assert ("global_prior" in artifact) == (scale == "prior")

    stage2 = registry.create("fedmlp", settings)
    stage2.preload(artifact)
    assert not stage2.census(3)  # the prior came with the artifact
    final = federated.run(store, federation, stage2, TRAIN, MODEL, 3, rt, rounds=range(2, 4), initial_model=warm)
    assert [r.round for r in final.history] == [3, 4]
    assert final.history[-1].test_mAP == whole.history[-1].test_mAP
    assert all(torch.equal(x, y) for x, y in zip(_weights(whole.model), _weights(final.model)))


def test_prior_scale_resumes_with_the_saved_prior(store: ImageStore, federation: dict, tmp_path) -> None:
    """The global prior is server state: a run stopped in stage 2 continues without a second census
    to the weights of the uninterrupted run."""
    from fedmlp.resume import ResumePoint

    settings = {**SHORT, "degree_scale": "prior"}
    rt = runtime.resolve("cpu", "fp32", 1)
    whole = federated.run(store, federation, registry.create("fedmlp", settings), TRAIN, MODEL, 3, rt)
    point = ResumePoint(tmp_path / "state.pt", key="run")

    def stop_in_round_4(round_number, clients, states):
        if round_number == 4:
            raise KeyboardInterrupt
        return []

    with pytest.raises(KeyboardInterrupt):
        federated.run(store, federation, registry.create("fedmlp", settings), TRAIN, MODEL, 3, rt, resume=point, on_round_end=stop_in_round_4)
    assert point.load()["round"] == 3 and point.load()["method"]["prior"] is not None
    resumed = registry.create("fedmlp", settings)
    censuses = []
    resumed.server_census = lambda server, uploads: censuses.append(server.round)
    final = federated.run(store, federation, resumed, TRAIN, MODEL, 3, rt, resume=point)
    assert censuses == [] and all(torch.equal(x, y) for x, y in zip(_weights(whole.model), _weights(final.model)))


def test_variants_select_differently(store: ImageStore, federation: dict) -> None:
    rt = runtime.resolve("cpu", "fp32", 1)
    counts = {}
    for name in ("fedmlp", "fedmlp-fixed"):
        method = registry.create(name, SHORT)
        model = federated.run(store, federation, method, TRAIN, MODEL, 0, rt, rounds=range(1)).model
        site = federated.start_round(store, federation, method, TRAIN, rt, 0, model, 2)
        clients, states = list(site.clients.values()), site.state_list()
        counts[name] = sum(int((s["pseudo"] != UNLABELLED).sum()) for s in states)
        assert all((s["pseudo"][:, c.annotated] == UNLABELLED).all() for s, c in zip(states, clients))
    assert counts["fedmlp"] > counts["fedmlp-fixed"] > 0


# Non-default values of every FedMLP key that is neither a warm-up key nor one the first detection reads.
LATER_KEYS = {"lambda_cr": 0.25, "stage2_views": 1, "pseudo_weight": 0.5, "oracle_pseudolabels": True}
DETECTION_KEYS = {"selection": "fixed", "accumulate": False, "variant": "official-code", "confidence_low": 0.2,
                  "confidence_high": 0.8, "degree_scale": "prior", "tau0": {"min": 0.1, "max": 0.5, "fixed": 0.2}, "tau1": {"min": 0.1, "max": 0.5, "fixed": 0.2}}


def test_stage_keys_are_classified_by_what_each_stage_reads(store: ImageStore, federation: dict) -> None:
    """The workflow passes the warm-up only STAGE1_KEYS and the pseudolabel stage every key but
    NOT_DETECTION_KEYS (workflow/rules/common.smk): every other key must leave their outputs unchanged."""
    config = registry.spec("fedmlp").config
    assert set(LATER_KEYS) == set(config.NOT_DETECTION_KEYS)
    rt = runtime.resolve("cpu", "fp32", 1)

    def warmup(settings: dict) -> torch.nn.Module:
        return federated.run(store, federation, registry.create("fedmlp", settings), TRAIN, MODEL, 1, rt, rounds=range(2)).model

    base = warmup(SHORT)
    assert all(torch.equal(x, y) for x, y in zip(_weights(base), _weights(warmup({**SHORT, **LATER_KEYS, **DETECTION_KEYS}))))

    def detection(settings: dict) -> dict:
        method = registry.create("fedmlp", settings)
        site = federated.start_round(store, federation, method, TRAIN, rt, 1, base, 2)
        artifact = method.export(list(site.clients.values()), site.state_list(), store)
        return {k: v for k, v in artifact.items() if k != "config"}

    assert detection(SHORT) == detection({**SHORT, **LATER_KEYS})
    assert detection(SHORT) != detection({**SHORT, **DETECTION_KEYS})  # the test can tell
    assert detection(SHORT)["clients"] != detection({**SHORT, "degree_scale": "prior"})["clients"]  # the degrees, thresholds


class _Stage2Context:
    """A client's context in stage 2 for FedMLP.loss on a constructed batch: the model returns fixed logits."""

    round = 1  # warmup_rounds 1: stage 2

    def __init__(self, logits: torch.Tensor, pseudo: torch.Tensor, teacher: torch.Tensor, oracle: torch.Tensor | None = None):
        self.state = {"offset": torch.tensor([-1.5, 0.0, 0.0, 0.0]), "pseudo": pseudo}
        if oracle is not None:
            self.state["oracle"] = oracle
        self.model = lambda images: logits[: len(images)]
        self.teacher = lambda images: teacher[: len(images)]

    @staticmethod
    def augment(images, policy="weak"):
        return images


LOGITS = torch.tensor([[2.0, -1.0, 0.5, 3.0], [-0.5, 1.5, -2.0, 0.0], [1.0, 0.0, 0.25, -1.0]])
TEACHER = torch.tensor([[1.0, -0.5, 0.0, 2.0], [0.0, 1.0, -1.0, 0.5], [0.5, 0.5, 0.0, 0.0]])
PSEUDO = torch.tensor([[-1, 0, -1, -1], [-1, 1, 0, -1], [-1, -1, -1, 1]], dtype=torch.int8)
BATCH = type("B", (), {"images": torch.zeros(3, 1, 2, 2), "observed": torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]),
                       "annotated": torch.tensor([True, False, False, False]), "positions": torch.arange(3)})


def _stage2_loss(settings: dict, pseudo: torch.Tensor = PSEUDO, oracle: torch.Tensor | None = None) -> torch.Tensor:
    method = registry.create("fedmlp", {"warmup_rounds": 1, "stage2_views": 1, **settings})  # the constructed logits are one view's
    return method.loss(_Stage2Context(LOGITS, pseudo, TEACHER, oracle), BATCH)


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_pseudo_weight_on_a_constructed_batch(weight: float) -> None:
    """Stage 2's BCE is the weighted mean of the annotated entries (weight 1, logit-adjusted) and the
    pseudo-labelled ones (pseudo_weight, not adjusted); the CR term on the other missing entries is unchanged."""
    def bce(i: int, c: int, target: float, offset: float = 0.0) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(LOGITS[i, c] + offset, torch.tensor(target))

    annotated = [bce(0, 0, 1.0, -1.5), bce(1, 0, 0.0, -1.5), bce(2, 0, 1.0, -1.5)]
    pseudo = [bce(0, 1, 0.0), bce(1, 1, 1.0), bce(1, 2, 0.0), bce(2, 3, 1.0)]
    expected_bce = (sum(annotated) + weight * sum(pseudo)) / (len(annotated) + weight * len(pseudo))
    rest = [(i, c) for i in range(3) for c in range(1, 4) if PSEUDO[i, c] == UNLABELLED]
    cr = torch.stack([(torch.sigmoid(LOGITS[i, c]) - torch.sigmoid(TEACHER[i, c])) ** 2 for i, c in rest]).mean()
    assert _stage2_loss({"pseudo_weight": weight, "lambda_cr": 0.0}).item() == pytest.approx(expected_bce.item(), rel=1e-6)
    assert _stage2_loss({"pseudo_weight": weight}).item() == pytest.approx((expected_bce + cr).item(), rel=1e-6)


def test_pseudo_weight_one_is_the_plain_mean_bit_for_bit() -> None:
    assert torch.equal(_stage2_loss({"pseudo_weight": 1.0}), _stage2_loss({}))
    plain = (sum(F.binary_cross_entropy_with_logits(LOGITS[i, 0] - 1.5, BATCH.observed[i, 0]) for i in range(3))
             + sum(F.binary_cross_entropy_with_logits(LOGITS[i, c], PSEUDO[i, c].float()) for i in range(3) for c in range(1, 4)
                   if PSEUDO[i, c] != UNLABELLED)) / 7
    assert _stage2_loss({"lambda_cr": 0.0}).item() == pytest.approx(plain.item(), rel=1e-6)


def test_oracle_targets_keep_the_entries_and_take_the_true_values() -> None:
    truth = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0]], dtype=torch.int8)
    oracle = oracle_targets(PSEUDO, truth)
    assert torch.equal(oracle != UNLABELLED, PSEUDO != UNLABELLED)  # the same selected entries
    assert oracle[PSEUDO != UNLABELLED].tolist() == truth[PSEUDO != UNLABELLED].tolist()
    # the loss trains those entries on the oracle's values, and everything else as before
    assert torch.equal(_stage2_loss({"oracle_pseudolabels": True}, oracle=oracle), _stage2_loss({}, pseudo=oracle))
    assert not torch.equal(_stage2_loss({"oracle_pseudolabels": True}, oracle=oracle), _stage2_loss({}))


def test_oracle_run_reads_the_truth_at_the_selected_entries_only(store: ImageStore, federation: dict, caplog) -> None:
    """With oracle_pseudolabels the selection is the method's (state["pseudo"], what the diagnostics
    score); the training targets at those entries are the hidden labels. It warns, in the log and in
    the method's warnings (metrics.json)."""
    rt = runtime.resolve("cpu", "fp32", 1)
    assert registry.create("fedmlp", SHORT).warnings() == []
    with caplog.at_level("WARNING", logger="fedmlp.methods.fedmlp"):
        oracle = registry.create("fedmlp", {**SHORT, "oracle_pseudolabels": True})
    assert "hidden TRUE labels" in caplog.text and "not a method" in oracle.warnings()[0]
    model = federated.run(store, federation, registry.create("fedmlp", SHORT), TRAIN, MODEL, 0, rt, rounds=range(2)).model
    plain = federated.start_round(store, federation, registry.create("fedmlp", SHORT), TRAIN, rt, 0, model, 2)
    site = federated.start_round(store, federation, oracle, TRAIN, rt, 0, model, 2)
    wrong = 0
    for client, state, reference in zip(site.clients.values(), site.state_list(), plain.state_list()):
        assert torch.equal(state["pseudo"], reference["pseudo"]) and "oracle" not in reference
        selected = state["pseudo"] != UNLABELLED
        truth = torch.from_numpy(store.labels[client.rows])
        assert torch.equal(state["oracle"][selected], truth[selected]) and (state["oracle"][~selected] == UNLABELLED).all()
        wrong += int((state["pseudo"][selected] != truth[selected]).sum())
    assert wrong > 0, "the fixture's detection should make some errors for the oracle to correct"


def test_gate_log_is_the_share_of_missing_entries_the_diagnostics_count(store: ImageStore, federation: dict) -> None:
    """FedMLP's gate rate per stage-2 round and client is the share of its missing entries holding a
    pseudo-label: the diagnostics' selected counts over the client's missing entries."""
    from fedmlp.diagnostics import pseudo_label_quality

    rt = runtime.resolve("cpu", "fp32", 1)
    result = federated.run(store, federation, registry.create("fedmlp", SHORT), TRAIN, MODEL, 0, rt,
                           on_round_end=lambda r, clients, states: pseudo_label_quality(r, store, clients, states))
    rates = client_rates(result, "pseudo", [3, 4], client_ids(federation))
    sizes = {c["id"]: len(c["images"]) * (len(store.classes) - len(c["annotated_classes"])) for c in federation["clients"]}
    for (round_number, client), rate in rates.items():
        rows = [r for r in result.round_rows if r["round"] == round_number and r["client"] == client]
        assert rate == pytest.approx(sum(r["selected_negative"] + r["selected_positive"] for r in rows) / sizes[client])
    assert max(rates.values()) > 0
