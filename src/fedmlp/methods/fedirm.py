"""FedIRM (Liu et al., MICCAI 2021) for missing classes, as docs/baselines.md § FedIRM describes it.

Two phases. Phase 1 (the first rounds, ``phase1_fraction`` of the run): every client trains BCE on
its annotated classes over two augmented views. Phase 2 (the rest): the same supervised term plus,
on the missing classes, a consistency to the client's own EMA teacher and an inter-client
relation-matching term.

A *relation matrix* R (C × C) has one row per class c: R[c, j] = σ(mean of logit j over the samples
positive for c / T). Each client computes the rows of its annotated classes from its observed labels,
accumulating logit sums and counts over its local epoch (from the last phase-1 round on), and uploads
them; the server averages row c over the clients that annotate c, weighted by their counts, keeps the
result as the global matrix R^G and broadcasts it in phase 2. There each client builds a source
matrix per batch from its confident, low-uncertainty samples (observed labels on annotated classes,
pseudo-labels on missing ones) and pulls it towards R^G with a symmetric Bernoulli KL divergence.
Which predictions count as confident is the ``gate``: ``sample`` (the published one) needs every
class of a sample confident at once, ``missing`` only its missing classes, ``entry`` lets each
confident entry (sample, class) into its class's row on its own.

Cost per step: phase 1, one forward and backward pass over both views (2 images per image); phase 2,
the same plus one no-grad forward of the EMA teacher on view 2 (as FedMLP's stage 2).

Client state: the BCE positive weights, the EMA teacher (from the first phase-2 round) and its step
counter. Gate rates (:func:`~fedmlp.methods.base.record_gate`), per phase-2 round: ``relation``, the
share of samples (gate ``entry``: of entries) that pass the gate, and ``relation_batches``,
the share of batches whose matching term has a row to compare (is not 0).
Server state: the global relation matrix and which of its rows are defined.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.errors import FedmlpError
from fedmlp.loader import Batch, ClientData
from fedmlp.methods.base import LocalContext, Method, ServerContext, record_gate
from fedmlp.methods.common import ema_alpha, ema_update_, local_ema_pairs, masked_mean, positive_weights
from fedmlp.methods.messages import Entry, Upload, Weights
from fedmlp.methods.registry import register
from fedmlp.schema import setting

log = logging.getLogger(__name__)

# The per-round accumulator of the relation rows, kept in the client state only during a local update.
ACCUMULATOR = "relation_accumulator"


@dataclass(frozen=True)
class FedIRMConfig:
    """FedIRM (docs/baselines.md § FedIRM): supervised warm-up, then EMA-teacher consistency and inter-client
    relation matching on the missing classes."""

    phase1_fraction: float = setting(
        0.04, "Share of the run in phase 1 (supervised only): ceil(phase1_fraction · train.rounds) rounds, at least 1 and "
              "at most train.rounds − 1 (the published code: 20 of 500 rounds; 1 of the default 20).",
        exclusiveMinimum=0, maximum=1)
    temperature: float = setting(2.0, "T of the relation rows σ(mean logits / T).", exclusiveMinimum=0)
    ema_decay: float = setting(0.99, "EMA decay α of the per-client teacher, with the warm-start min(1 − 1/(t + 1), α) "
                                     "at its step t (from 0 at the first phase-2 round).", minimum=0, maximum=1)
    lam: float = setting(1.0, "λ: weight of the phase-2 terms (consistency + relation matching), times the ramp w(t); "
                              "1 in the published FedMLP code, 15 in the original FedIRM.", minimum=0)
    rampup_fraction: float = setting(
        0.06, "Length L of the ramp w(t) = exp(−5 (1 − min(t / L, 1))²) at round t, as a share of the run (the published "
              "code: 30 of 500 rounds); 0: no ramp.", minimum=0, maximum=1)
    entropy_threshold: float = setting(2.0, "Source-matrix mask: a sample is used when the sum over classes of the binary "
                                            "entropy of its predictions (nats) is below this and every class is confident.",
                                       exclusiveMinimum=0)
    confidence_high: float = setting(0.7, "Source-matrix mask: a class is confident when its probability is above this or "
                                          "below confidence_low.", minimum=0, maximum=1)
    confidence_low: float = setting(0.3, "Source-matrix mask: a class is confident when its probability is below this or "
                                         "above confidence_high.", minimum=0, maximum=1)
    pseudo_threshold: float = setting(0.5, "Pseudo-label 1 where the probability of a missing class exceeds it.",
                                      minimum=0, maximum=1)
    gate: Literal["sample", "missing", "entry"] = setting(
        "sample", "Which predictions build the source matrix. sample (the published gate): samples whose summed entropy is "
        "below entropy_threshold and whose every class is confident; missing: the same over the client's missing classes "
        "only; entry: each confident entry (sample, class) joins its class's row on its own (entropy_threshold unused). "
        "variant official-code: always sample.")
    pos_weight: bool = setting(
        False, "Positive weight N_k / n⁺_kc in the BCE of annotated classes, from the client's observed labels (1 where a class has "
        "no positive); off by default like the FedAvg reference points; official-code turns it on, as the published code.")
    variant: Literal["clean", "official-code"] = setting(
        "clean", "official-code: the published FedMLP code's FedIRM (pseudo-labels on every class, 0.5 rows where a class "
                 "has no positive, uploaded rows averaged per batch and aggregated by client size, a KL over the "
                 "unnormalised rows, consistency over all classes summed per sample, parameters-only EMA).")

    ORDERED_KEYS = (("confidence_low", "confidence_high"),)


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def phase1_rounds(total_rounds: int, fraction: float) -> int:
    """Rounds in phase 1: ceil(fraction · total), at least 1, and at most total − 1 when the run has
    two rounds or more (so that phase 2 happens)."""
    rounds = max(1, math.ceil(fraction * total_rounds - 1e-9))
    return min(rounds, total_rounds - 1) if total_rounds >= 2 else rounds


def sigmoid_rampup(t: float, length: float) -> float:
    """w(t) = exp(−5 (1 − min(t / L, 1))²): exp(−5) at t = 0, 1 from t = L; 1 when L = 0."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(t / length, 0.0), 1.0)
    return math.exp(-5.0 * phase * phase)


def relation_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class c: the sum of the logit vectors of the samples with label 1 for c (C × C) and their count (C)."""
    labels = labels.to(logits.dtype)
    return labels.T @ logits, labels.sum(0)


def relation_rows(sums: torch.Tensor, counts: torch.Tensor, temperature: float) -> torch.Tensor:
    """R[c] = σ(sums[c] / counts[c] / T); a row without samples is σ(0) = 0.5 (the published code's value)."""
    return torch.sigmoid(sums / counts.clamp(min=1)[:, None] / temperature)


def aggregate_relation(rows: list[torch.Tensor], weights: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global matrix: row c = Σ_k w_kc R_k[c] / Σ_k w_kc (w_kc = 0 where client k has no row c).
    Returns the matrix (0.5 in rows nobody defines) and which rows are defined."""
    stacked = torch.stack([r.double() for r in rows])  # (K, C, C)
    w = torch.stack([x.double() for x in weights])  # (K, C)
    total = w.sum(0)
    merged = (stacked * w[:, :, None]).sum(0) / total.clamp(min=1e-12)[:, None]
    defined = total > 0
    return torch.where(defined[:, None], merged, torch.full_like(merged, 0.5)).float(), defined


def sample_mask(probabilities: torch.Tensor, entropy_threshold: float, low: float, high: float) -> torch.Tensor:
    """Samples whose summed binary entropy Σ_c H(p_c) is below the threshold and whose every class is
    confident (p > high or p < low). (B,) bool."""
    p = probabilities
    entropy = -(p * torch.log(p + 1e-6) + (1 - p) * torch.log(1 - p + 1e-6)).sum(1)
    confident = ((p > high) | (p < low)).all(1)
    return (entropy < entropy_threshold) & confident


def pseudo_targets(probabilities: torch.Tensor, observed: torch.Tensor, annotated: torch.Tensor, threshold: float,
                   every_class: bool = False) -> torch.Tensor:
    """Labels of the source matrix: the observed label on annotated classes and 1[p > threshold] on
    missing ones (``every_class``: 1[p > threshold] everywhere, as the published code)."""
    hard = (probabilities > threshold).to(observed.dtype)
    return hard if every_class else torch.where(annotated[None, :], observed, hard)


def symmetric_bernoulli_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """½ [KL(Ber(p) ‖ Ber(q)) + KL(Ber(q) ‖ Ber(p))] = ½ (p − q)(logit p − logit q), elementwise."""
    p, q = p.clamp(eps, 1 - eps), q.clamp(eps, 1 - eps)
    return 0.5 * (p - q) * (torch.logit(p) - torch.logit(q))


def relation_divergence(source: torch.Tensor, source_defined: torch.Tensor, target: torch.Tensor,
                        target_defined: torch.Tensor) -> torch.Tensor:
    """Mean over (j, c) of the symmetric Bernoulli KL between the rows j defined in both matrices; 0
    when there is none."""
    rows = source_defined & target_defined
    if not bool(rows.any()):
        return source.sum() * 0.0
    return symmetric_bernoulli_kl(source[rows], target[rows]).mean()


def official_relation_divergence(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The published code's divergence: ½ [KL(T ‖ S) + KL(S ‖ T)] summed over the C × C entries of the
    rows as if they were distributions (no 1 − p terms), divided by the C rows."""
    s, t = source.clamp(min=eps), target.clamp(min=eps)
    return 0.5 * ((t * (t.log() - s.log())).sum() + (s * (s.log() - t.log())).sum()) / source.shape[0]


# ---------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    relation: torch.Tensor | None = None  # (C, C) global relation matrix R^G
    defined: torch.Tensor | None = None  # (C,) bool: rows some client has defined


class FedIRM(Method):
    # the relation rows of the local update, the positives behind them (summed over local epochs), the annotated
    # classes; nothing in a round without relation matching
    payloads = {"train": {"rows": Entry(torch.float32, ("C", "C"), required=False),
                         "counts": Entry(torch.float32, ("C",), required=False, minimum=0),
                         "annotated": Entry(torch.bool, ("C",), required=False)}}

    def __init__(self, name: str, config: FedIRMConfig):
        if config.confidence_low > config.confidence_high:
            raise FedmlpError(f"config key 'fedirm.confidence_low': {config.confidence_low} is more than "
                              f"'fedirm.confidence_high' ({config.confidence_high})")
        self.name = name
        self.config = config
        self.official = config.variant == "official-code"
        self.gate = "sample" if self.official else config.gate
        self.server = ServerState()

    def phase1(self, total_rounds: int) -> int:
        return phase1_rounds(total_rounds, self.config.phase1_fraction)

    # --- server side ---------------------------------------------------------------------------

    def broadcast_payload(self, server: ServerContext) -> dict[str, Any]:
        if self.server.relation is None or server.round < self.phase1(server.total_rounds):
            return {}
        return {"relation": self.server.relation, "defined": self.server.defined}

    def aggregate(self, server: ServerContext, updates: list[Upload]) -> Weights:
        uploads = [u for u in updates if "rows" in u.payload]
        if uploads:
            if self.official:  # client size, for every client that annotates the class
                weights = [u.payload["annotated"].double() * u.n_samples for u in uploads]
            else:  # the number of positives behind each row
                weights = [u.payload["counts"] for u in uploads]
            relation, defined = aggregate_relation([u.payload["rows"] for u in uploads], weights)
            if not self.official and self.server.relation is not None:  # keep rows nobody updated this round
                relation = torch.where(defined[:, None], relation, self.server.relation)
                defined = defined | self.server.defined
            self.server = ServerState(relation, defined)
        return server.average(updates)

    # --- client side ---------------------------------------------------------------------------

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {"pos_weight": positive_weights(client.observed, client.annotated), "step": 0}

    def before_training(self, ctx: LocalContext) -> None:
        start = self.phase1(ctx.total_rounds)
        if ctx.round >= start - 1:  # this round's upload feeds the global matrix of the next round
            n = ctx.client.observed.shape[1]
            device = ctx.runtime.device
            ctx.state[ACCUMULATOR] = {"sums": torch.zeros(n, n, device=device), "counts": torch.zeros(n, device=device),
                                      "rows": torch.zeros(n, n, device=device), "batches": 0, "masked": 0, "seen": 0,
                                      "matched": 0, "phase2_batches": 0}
        if ctx.round >= start:
            if "teacher" not in ctx.state:  # the first phase-2 round: the teacher starts as the received model
                ctx.state["teacher"] = {k: v.detach().cpu().clone() for k, v in ctx.model.state_dict().items()}
                ctx.state["step"] = 0
            ctx.scratch.load_state_dict(ctx.state["teacher"])

    def after_training(self, ctx: LocalContext) -> None:
        if ctx.round >= self.phase1(ctx.total_rounds):
            ctx.state["teacher"] = {k: v.detach().cpu().clone() for k, v in ctx.scratch.state_dict().items()}

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        config = self.config
        b = len(batch.positions)
        images = torch.cat([ctx.augment(batch.images), ctx.augment(batch.images)])  # two views, one forward
        logits = ctx.model(images).float()
        z1 = logits[:b]
        annotated = batch.annotated[None, :].expand_as(z1)
        pos_weight = ctx.state["pos_weight"].to(logits.device) if config.pos_weight or self.official else None
        loss = sum(masked_mean(F.binary_cross_entropy_with_logits(z, batch.observed, pos_weight=pos_weight, reduction="none"),
                               annotated) for z in (z1, logits[b:]))  # the two views' mean BCEs, summed
        accumulator = ctx.state.get(ACCUMULATOR)
        if accumulator is not None:
            self._accumulate(accumulator, z1.detach(), batch.observed * annotated)
        if ctx.round < self.phase1(ctx.total_rounds):
            return loss

        # phase 2: consistency to the EMA teacher and relation matching
        p1 = torch.sigmoid(z1)
        with torch.inference_mode():  # the teacher is a constant target
            teacher = torch.sigmoid(ctx.scratch(images[b:]).float())
        if self.official:
            consistency = ((p1 - teacher) ** 2).sum() / b
        else:
            consistency = masked_mean((p1 - teacher) ** 2, ~annotated)
        with torch.no_grad():
            probabilities = p1.detach()
            targets = pseudo_targets(probabilities, batch.observed, batch.annotated, config.pseudo_threshold,
                                     every_class=self.official)
            if self.gate == "entry":
                passed = (probabilities > config.confidence_high) | (probabilities < config.confidence_low)
                members = targets * passed.to(targets.dtype)
            else:
                columns = probabilities if self.gate == "sample" else probabilities[:, ~batch.annotated]
                mask = sample_mask(columns, config.entropy_threshold, config.confidence_low, config.confidence_high)
        if self.gate == "entry":
            sums, counts = relation_sums(z1, members)
        else:
            sums, counts = relation_sums(z1[mask], targets[mask])
        source = relation_rows(sums, counts, config.temperature)
        relation = ctx.payload.get("relation")
        if relation is None:
            matching = source.sum() * 0.0
            compared = False
        elif self.official:
            matching = official_relation_divergence(source, relation.to(logits.device))
            compared = True  # the published divergence compares every row (0.5 where the source has none)
        else:
            defined = ctx.payload["defined"].to(logits.device)
            matching = relation_divergence(source, counts > 0, relation.to(logits.device), defined)
            compared = bool(((counts > 0) & defined).any())
        if accumulator is not None:
            if self.gate == "entry":
                accumulator["masked"] += int(passed.sum())
                accumulator["seen"] += passed.numel()
            else:
                accumulator["masked"] += int(mask.sum())
                accumulator["seen"] += b
            accumulator["matched"] += int(compared)
            accumulator["phase2_batches"] += 1
        ramp = sigmoid_rampup(ctx.round, config.rampup_fraction * ctx.total_rounds)
        return loss + config.lam * ramp * (consistency + matching)

    def _accumulate(self, accumulator: dict[str, Any], logits: torch.Tensor, labels: torch.Tensor) -> None:
        """The rows of the uploaded matrix, from view-1 logits and observed labels of annotated classes:
        sums and counts over the epoch (clean), or the per-batch rows averaged over batches (official-code)."""
        sums, counts = relation_sums(logits, labels)
        if self.official:
            accumulator["rows"] += relation_rows(sums, counts, self.config.temperature)
        else:
            accumulator["sums"] += sums
        accumulator["counts"] += counts
        accumulator["batches"] += 1

    def after_step(self, ctx: LocalContext) -> None:
        if ctx.round < self.phase1(ctx.total_rounds):
            return
        alpha = ema_alpha(ctx.state["step"], self.config.ema_decay)
        ema_update_(*local_ema_pairs(ctx.memo, ctx.scratch, ctx.model, buffers=not self.official), alpha)
        ctx.state["step"] += 1

    def upload_payload(self, ctx: LocalContext) -> dict[str, Any]:
        accumulator = ctx.state.pop(ACCUMULATOR, None)
        if accumulator is None:
            return {}
        if accumulator["seen"]:
            record_gate(ctx.state, "relation", accumulator["masked"] / accumulator["seen"])
        if accumulator["phase2_batches"]:
            record_gate(ctx.state, "relation_batches", accumulator["matched"] / accumulator["phase2_batches"])
        counts = accumulator["counts"].cpu()
        if self.official:
            rows = (accumulator["rows"] / max(accumulator["batches"], 1)).cpu()
        else:
            rows = relation_rows(accumulator["sums"], accumulator["counts"], self.config.temperature).cpu()
        return {"rows": rows, "counts": counts, "annotated": ctx.client.annotated.clone()}


@register("fedirm", display="FedIRM", section="fedirm", config=FedIRMConfig,
          summary="FedIRM: supervised warm-up, then EMA-teacher consistency and inter-client relation matching")
def _fedirm(settings: dict[str, Any]) -> Method:
    return FedIRM("fedirm", from_dict(FedIRMConfig, settings, "fedirm"))
