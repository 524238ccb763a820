"""FedNML (Hmxki/FedNML, "a robust federated learning framework for noisy and missing labels") without
its noise branch, as docs/baselines.md § FedNML describes it.

Two phases inside the run's ``train.rounds`` rounds:

- warm-up (the first ``warmup_fraction`` of the rounds, at least one): BCE on the annotated classes
  only (the loss of ``fedavg-masked``, bit for bit);
- refinement: every ``refine_every`` of the run (at least every round), from the warm-up's end on,
  the client runs the received global model over its images (eval mode, no augmentation) and turns
  its outputs p into hybrid pseudo-labels g = 1 where p > ``hard_high``, 0 where p < ``hard_low``,
  p otherwise. The client's label store Y (kept in its state) holds the observed labels on annotated
  classes; on missing classes it is set to g at the first refinement and moved towards g afterwards,
  Y ← μ · g + (1 − μ) · Y (μ = ``missing_momentum``). Then every batch trains

      L = w · BCE(z + τ·a, σ(z_G)) + (1 − w) · BCE(z + τ·a, Y)     (means over B × C)

  with z_G the frozen received model's logits on the same view, w = w_kd(t) the ramp
  ``kd_weight`` · exp(−``kd_ramp_exponent`` · (1 − x)²), x the progress from the warm-up's end to
  ``kd_ramp_end`` of the run, and a the label-dependent logit offset a = Y log π + (1 − Y) log(1 − π)
  (``offset_rule: exact``: log π where Y = 1, log(1 − π) elsewhere, the published code's rule).
  π is the client's observed prevalence (Laplace-smoothed) on annotated classes; on missing classes
  it starts at the global prevalence the server pooled from a census of the clients' label counts
  (round 1, labels only) and moves, at each refinement, towards the mean of Y: π ← w · mean(Y) +
  (1 − w) · π, clipped to [1e-3, 1 − 1e-3].

The published code's noisy-sample correction (a two-component Gaussian mixture that overwrites the
annotated labels of the "noisy" cluster) is not implemented: our annotated labels are clean. The
hidden labels of missing classes are never read; Y's missing part comes from model outputs only.

Server: FedAvg weighted by N_k; the census's global prevalence rides on the broadcasts from the
warm-up's end on. Gate rate (:func:`~fedmlp.methods.base.record_gate`) per refinement round:
``hard``, the share of the client's missing entries whose new pseudo-label is hard (0 or 1).

Cost per image and step: one forward and one backward on one weak view, plus one no-grad forward of
the teacher after the warm-up; plus one eval forward per image in each refinement round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.loader import Batch, ClientData
from fedmlp.methods.base import LocalContext, Method, ServerContext, record_gate
from fedmlp.methods.common import class_prior, client_pass, global_prior, label_counts
from fedmlp.methods.messages import CENSUS, Entry, Upload
from fedmlp.methods.registry import register
from fedmlp.schema import setting

PRIOR_BOUNDS = (1e-3, 1 - 1e-3)  # π is clipped here, so that log π and log(1 − π) stay finite


@dataclass(frozen=True)
class FedNMLConfig:
    """FedNML (docs/baselines.md § FedNML): masked warm-up, then distillation from the global model,
    hybrid pseudo-labels on missing classes and a label-dependent logit offset."""

    warmup_fraction: float = setting(
        0.1, "Share of the run's rounds in the masked warm-up, rounded, at least 1 round (the published code: 10 of 100).",
        minimum=0, maximum=1)
    refine_every: float = setting(
        0.05, "Rounds between pseudo-label refinements, as a share of the run, rounded, at least 1 (the published code: "
        "5 of 100).", minimum=0, maximum=1)
    hard_high: float = setting(0.9, "A missing entry whose global-model probability is above it gets the hard label 1.",
                               exclusiveMinimum=0.5, maximum=1)
    hard_low: float = setting(0.1, "Below it, the hard label 0; between the two, the probability itself (a soft label).",
                              minimum=0, exclusiveMaximum=0.5)
    missing_momentum: float = setting(
        0.2, "μ: weight of the new hybrid label in Y ← μ·g + (1 − μ)·Y on missing classes (after the first refinement, "
        "which sets Y = g).", minimum=0, maximum=1)
    kd_weight: float = setting(0.8, "Final weight w of the distillation term (at the ramp's end).", minimum=0, maximum=1)
    kd_ramp_end: float = setting(
        1.0, "Round where w reaches kd_weight, as a share of the run; the ramp starts at the warm-up's end.",
        minimum=0, maximum=1)
    kd_ramp_exponent: float = setting(2.0, "s in w = kd_weight · exp(−s (1 − x)²) (2 in the published code).", minimum=0)
    logit_adjust: bool = setting(True, "Add the label-dependent offset τ·a to the logits in both terms (training only).")
    la_tau: float = setting(1.0, "τ of the logit offset.", minimum=0)
    offset_rule: Literal["soft", "exact"] = setting(
        "soft", "soft: a = Y log π + (1 − Y) log(1 − π); exact: log π where Y = 1 exactly, else log(1 − π) "
        "(the published code, which gives every soft label the negative side's offset).")


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def share_of_rounds(total_rounds: int, fraction: float) -> int:
    """``fraction`` of the run in rounds, rounded half up, at least 1 and at most the run."""
    return min(total_rounds, max(1, math.floor(fraction * total_rounds + 0.5)))


def kd_ramp(round: int, begin: int, end: float, scale: float, exponent: float) -> float:
    """w = scale · exp(−exponent · (1 − x)²), x = clip((t − begin) / (end − begin), 0, 1); a step at
    ``begin`` when end ≤ begin."""
    x = (1.0 if round >= begin else 0.0) if end <= begin else min(max((round - begin) / (end - begin), 0.0), 1.0)
    return scale * math.exp(-exponent * (1.0 - x) ** 2)


def hybrid_labels(probabilities: torch.Tensor, high: float, low: float) -> torch.Tensor:
    """g = 1 where p > high, 0 where p < low, p elsewhere."""
    ones, zeros = torch.ones_like(probabilities), torch.zeros_like(probabilities)
    return torch.where(probabilities > high, ones, torch.where(probabilities < low, zeros, probabilities))


def label_offset(targets: torch.Tensor, prior: torch.Tensor, rule: str) -> torch.Tensor:
    """The label-dependent logit offset a (B, C): Y log π + (1 − Y) log(1 − π) (``soft``), or log π
    where Y = 1 and log(1 − π) elsewhere (``exact``)."""
    log_pos, log_neg = torch.log(prior), torch.log1p(-prior)
    if rule == "exact":
        return torch.where(targets == 1, log_pos, log_neg)
    return targets * log_pos + (1 - targets) * log_neg


def refinement_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, offset: torch.Tensor | float,
                    kd: float) -> torch.Tensor:
    """w · BCE(z + a, σ(z_G)) + (1 − w) · BCE(z + a, Y), each the mean over all B × C entries."""
    adjusted = logits + offset
    distill = F.binary_cross_entropy_with_logits(adjusted, torch.sigmoid(teacher_logits))
    supervised = F.binary_cross_entropy_with_logits(adjusted, targets)
    return kd * distill + (1 - kd) * supervised


# ---------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    prior: torch.Tensor | None = None  # (C,) global prevalence pooled from the census (None before it)


class FedNML(Method):
    payloads = {CENSUS: {"counts": Entry(torch.float32, ("C", 2), minimum=0, maximum="N")}}

    def __init__(self, name: str, config: FedNMLConfig):
        self.name = name
        self.config = config
        self.server = ServerState()

    def warmup(self, total_rounds: int) -> int:
        """Rounds of the masked warm-up (the first refinement is the round after them)."""
        return share_of_rounds(total_rounds, self.config.warmup_fraction)

    def refines(self, round: int, total_rounds: int) -> bool:
        start = self.warmup(total_rounds)
        return round >= start and (round - start) % share_of_rounds(total_rounds, self.config.refine_every) == 0

    def kd_lambda(self, round: int, total_rounds: int) -> float:
        c = self.config
        return kd_ramp(round, self.warmup(total_rounds), c.kd_ramp_end * total_rounds, c.kd_weight, c.kd_ramp_exponent)

    # --- server side ---------------------------------------------------------------------------

    def census(self, round: int) -> bool:
        """Once, at the first round (or the first after a resume from a state without it): the
        prevalence is needed only for the logit offset."""
        return self.config.logit_adjust and self.server.prior is None

    def server_census(self, server: ServerContext, uploads: list[Upload]) -> None:
        self.server.prior = global_prior([u.payload["counts"] for u in uploads])

    def broadcast_payload(self, server: ServerContext) -> dict[str, Any]:
        if server.round < self.warmup(server.total_rounds) or self.server.prior is None:
            return {}
        return {"prior": self.server.prior}

    # --- client side ---------------------------------------------------------------------------

    def client_census(self, ctx: LocalContext) -> dict[str, Any]:
        """The client's label counts per annotated class (C, 2): negatives and positives."""
        return {"counts": label_counts(ctx.client.observed, ctx.client.annotated)}

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {
            "labels": client.observed.clone(),  # Y: observed on annotated classes, pseudo-labels on missing ones
            "prior": class_prior(client.observed, client.annotated),  # π: missing entries set at the first refinement
            "refined": False,
        }

    def before_training(self, ctx: LocalContext) -> None:
        if ctx.round < self.warmup(ctx.total_rounds):
            return
        if self.refines(ctx.round, ctx.total_rounds) or not ctx.state["refined"]:
            self.refine(ctx)

    def refine(self, ctx: LocalContext) -> None:
        """New hybrid pseudo-labels from the received model; Y and π of the missing classes move towards them."""
        state, missing, c = ctx.state, ctx.client.missing, self.config
        if not bool(missing.any()):
            state["refined"] = True
            return
        _, probabilities = client_pass(ctx.teacher, ctx.store, ctx.client, ctx.runtime)
        g = hybrid_labels(probabilities[:, missing], c.hard_high, c.hard_low)
        record_gate(state, "hard", float(((g == 0) | (g == 1)).float().mean()))
        labels, prior = state["labels"], state["prior"]
        first = not state["refined"]
        labels[:, missing] = g if first else c.missing_momentum * g + (1 - c.missing_momentum) * labels[:, missing]
        if first:
            received = ctx.payload.get("prior")
            prior[missing] = received[missing].to(prior.dtype) if received is not None else 0.5
        w = self.kd_lambda(ctx.round, ctx.total_rounds)
        prior[missing] = (w * labels[:, missing].mean(0) + (1 - w) * prior[missing]).clamp(*PRIOR_BOUNDS)
        state["refined"] = True

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        images = ctx.augment(batch.images)
        logits = ctx.model(images).float()
        if ctx.round < self.warmup(ctx.total_rounds):  # fedavg-masked's loss
            bce = F.binary_cross_entropy_with_logits(logits, batch.observed, reduction="none")
            return bce[:, batch.annotated].mean()
        with torch.inference_mode():  # the teacher is a constant target
            teacher = ctx.teacher(images).float()
        teacher = teacher.clone()  # an ordinary tensor, usable in autograd-recorded operations
        targets = ctx.state["labels"][batch.positions].to(logits.device)
        offset: torch.Tensor | float = 0.0
        if self.config.logit_adjust:
            prior = ctx.state["prior"].to(logits.device)
            offset = self.config.la_tau * label_offset(targets, prior, self.config.offset_rule)
        return refinement_loss(logits, teacher, targets, offset, self.kd_lambda(ctx.round, ctx.total_rounds))


@register("fednml", display="FedNML", section="fednml", config=FedNMLConfig,
          summary="FedNML: masked warm-up, then ramped distillation from the global model, hybrid pseudo-labels on "
                  "missing classes and a label-dependent logit offset")
def _fednml(settings: dict[str, Any]) -> Method:
    return FedNML("fednml", from_dict(FedNMLConfig, settings, "fednml"))
