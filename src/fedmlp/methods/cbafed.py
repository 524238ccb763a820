"""CBAFed (Li, Li & Wang, CVPR 2023) adapted to missing classes, as docs/baselines.md § CBAFed describes it.

Two stages inside the run's ``train.rounds`` rounds: stage 1 (the first ``warmup_fraction`` of the
rounds, at least one) trains on annotated classes only; stage 2 adds pseudo-labels for the missing
classes, selected by class-balanced thresholds that the server derives from the clients' label
counts. The server averages with a residual connection: every ``residual_period`` rounds the new
average is mixed with the model kept at the previous mix (0.2/0.8 in stage 1, 0.5/0.5 in stage 2;
the kept model is reset at the start of each stage).

Clean version (``variant: clean``), stage-2 round of a client:

1. before training, one eval-mode pass of the received global model over the client's images (weak
   view) gives p; for each missing class c, pseudo-label 1 where p > τ_c, 0 where p < 1 − τ_c,
   nothing otherwise. The labels are frozen for the round (``state["pseudo"]``: -1/0/1, int8);
2. loss = BCE (pos_weight N/n⁺) over the annotated entries + mean BCE over the pseudo-labelled ones;
3. upload: per class, observed positives + pseudo-positives; aggregation weight: number of labelled
   plus pseudo-labelled entries. The server turns the summed counts into p_c (share of positive
   labels) and τ_c = clip(p_c + τ_base − std(p), τ_min, τ_max) for the next round.

``variant: official-code`` runs the published FedMLP code's version: pseudo-labels taken per batch
from the training forward itself, a per-batch positive weight |S_c| / #pseudo-positives, the
missing-class terms summed over classes, and p_c the share of *all* labelled entries (negatives
too), which with one annotator per class and equal clients gives the same τ for every class.

Cost per image and step: one forward and one backward on one weak view; the clean stage 2 adds one
no-grad eval forward per image and round (the labelling pass), the official code nothing.

Client state: the annotated-class positive weights, the pseudo-label matrix, the round's label
counts, and the thresholds used (``{class: (1 − τ_c, τ_c)}``, the bounds for pseudo-0 and pseudo-1,
for the pseudo-label diagnostics). Gate rates (:func:`~fedmlp.methods.base.record_gate`) per stage-2
round: ``pseudo``, the share of missing entries beyond their class's threshold (p > τ_c or
p < 1 − τ_c: pseudo-labelled), and ``pseudo_positive``, the share above τ_c (pseudo-label 1); for
official-code, from the labels each image got last. Server state: τ and the residual model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.loader import Batch, ClientData, iterate_rows
from fedmlp.methods.base import LocalContext, Method, ServerContext, record_gate
from fedmlp.methods.common import UNLABELLED, masked_mean, positive_weights
from fedmlp.methods.messages import Entry, Upload, Weights
from fedmlp.methods.registry import register
from fedmlp.schema import setting


@dataclass(frozen=True)
class CBAFedConfig:
    """CBAFed (docs/baselines.md § CBAFed): warm-up on annotated classes, then fixed pseudo-labels for
    missing classes under class-balanced thresholds, residual server averaging."""

    warmup_fraction: float = setting(
        0.1, "Share of the run's rounds in stage 1 (annotated-only BCE), rounded, at least 1 round "
        "(the published code: 50 of 500).", minimum=0, maximum=1)
    tau_base: float = setting(
        0.84, "τ_base in τ_c = clip(p_c + τ_base − std(p), tau_min, tau_max): 0.84, CBAFed's own, chosen on validation by config/tuning.yaml, docs/results/tuning "
        "(0.45 in FedMLP's code).",
        minimum=0, maximum=1)
    tau_min: float = setting(
        0.55, "Lower clip of τ_c (above 0.5, so pseudo-0 and pseudo-1 never overlap).", exclusiveMinimum=0.5, maximum=1)
    tau_max: float = setting(0.95, "Upper clip of τ_c.", exclusiveMinimum=0.5, maximum=1)
    residual_period: int = setting(
        5, "Rounds between residual mixes of the server model (counted from the start of each stage).", minimum=1)
    residual_warmup: float = setting(
        0.2, "Stage 1: weight of the new average in a residual mix (the rest goes to the kept model).", minimum=0, maximum=1)
    residual_stage2: float = setting(0.5, "Stage 2: weight of the new average in a residual mix.", minimum=0, maximum=1)
    pos_weight: bool = setting(
        False, "Positive weight N_k / n⁺_kc in the BCE of annotated classes, from the client's observed labels (1 where a class has "
        "no positive); off by default like the FedAvg reference points; official-code turns it on, as the published code.")
    pseudo_view: Literal["weak", "none"] = setting("weak", "View of the images in the clean labelling pass.")
    variant: Literal["clean", "official-code"] = setting(
        "clean", "official-code: pseudo-labels from the training forward per batch, ratio weights, per-class sum, "
        "p over all entries.")

    ORDERED_KEYS = (("tau_min", "tau_max"),)


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def warmup_rounds(total_rounds: int, fraction: float) -> int:
    """Stage-1 rounds: ``fraction`` of the run, rounded half up, at least 1 and at most the run."""
    return min(total_rounds, max(1, math.floor(fraction * total_rounds + 0.5)))


def thresholds(counts: torch.Tensor, base: float, low: float, high: float) -> torch.Tensor:
    """τ_c = clip(p_c + base − std(p), low, high) with p = counts / Σ counts (uniform if all are 0)
    and the unbiased standard deviation (0 for a single class)."""
    counts = counts.double()
    total = counts.sum()
    p = counts / total if total > 0 else torch.full_like(counts, 1.0 / len(counts))
    spread = p.std() if len(p) > 1 else torch.zeros((), dtype=p.dtype)
    return (p + base - spread).clamp(low, high).float()


def select_pseudo(probabilities: torch.Tensor, missing: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Pseudo-labels (N, C) int8: 1 where p > τ_c, 0 where p < 1 − τ_c, on missing classes; -1 elsewhere."""
    tau = tau.to(probabilities.device)
    pseudo = torch.full(probabilities.shape, UNLABELLED, dtype=torch.int8, device=probabilities.device)
    pseudo[(probabilities < 1 - tau) & missing] = 0
    pseudo[(probabilities > tau) & missing] = 1
    return pseudo


def positive_counts(observed: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    """Clean counts per class: observed positives (annotated classes) + pseudo-positives (missing ones)."""
    return observed.sum(0) + (pseudo == 1).sum(0).to(observed.dtype)


def entry_counts(n: int, annotated: torch.Tensor, selected: torch.Tensor | None = None) -> torch.Tensor:
    """The published code's counts per class for a batch of n: n per annotated class, plus the number of
    pseudo-labelled entries (either label) per missing class."""
    counts = annotated.to(torch.float32) * n
    return counts if selected is None else counts + selected.sum(0).to(torch.float32)


def labelled_entries(n: int, annotated: torch.Tensor, pseudo: torch.Tensor) -> float:
    """Clean aggregation weight: labelled entries (n · |A|) + pseudo-labelled entries."""
    return float(n * int(annotated.sum()) + int((pseudo != UNLABELLED).sum()))


def clean_loss(logits: torch.Tensor, observed: torch.Tensor, annotated: torch.Tensor, pos_weight: torch.Tensor,
               pseudo: torch.Tensor) -> torch.Tensor:
    """Mean BCE (pos_weight) over annotated entries + mean BCE (pos_weight 1) over pseudo-labelled ones."""
    selected = pseudo != UNLABELLED
    targets = torch.where(selected, pseudo.to(observed.dtype), observed)
    weight = torch.where(annotated, pos_weight, torch.ones_like(pos_weight))
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight, reduction="none")
    return masked_mean(bce, annotated[None, :].expand_as(bce)) + masked_mean(bce, selected)


def official_loss(logits: torch.Tensor, observed: torch.Tensor, annotated: torch.Tensor, pos_weight: torch.Tensor,
                  tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The published code's stage-2 loss for a batch, and the pseudo-labels it used (B, C int8).

    From the batch's own (training-mode) outputs: on missing class c, S_c = {p > τ_c or p < 1 − τ_c},
    target 1 where p > τ_c (else the stored 0), pos_weight |S_c| / #{p > τ_c} (1 if none). Loss:
    mean BCE over annotated entries + Σ_c (mean BCE over S_c)."""
    missing = ~annotated
    pseudo = select_pseudo(torch.sigmoid(logits.detach()), missing, tau)
    positive, selected = pseudo == 1, pseudo != UNLABELLED
    n_selected, n_positive = selected.sum(0).to(logits.dtype), positive.sum(0).to(logits.dtype)
    ratio = torch.where(n_positive > 0, n_selected / n_positive.clamp(min=1), torch.ones_like(n_positive))
    weight = torch.where(annotated, pos_weight, ratio)
    targets = torch.where(positive, torch.ones_like(observed), observed)
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight, reduction="none")
    per_class = (bce * selected).sum(0) / n_selected.clamp(min=1)
    loss = masked_mean(bce, annotated[None, :].expand_as(bce)) + (per_class * missing).sum()
    return loss, pseudo


def record_pseudo_gates(state: dict[str, Any], pseudo: torch.Tensor, missing: torch.Tensor) -> None:
    """The gate rates of a round's pseudo-labels: shares of the missing entries labelled (either way)
    and labelled 1. Nothing for a client without missing classes."""
    entries = pseudo[:, missing]
    if entries.numel():
        record_gate(state, "pseudo", float((entries != UNLABELLED).float().mean()))
        record_gate(state, "pseudo_positive", float((entries == 1).float().mean()))


def residual_mix(averaged: Weights, residual: Weights, alpha: float) -> Weights:
    """alpha · averaged + (1 − alpha) · residual on floating tensors; integer buffers from ``averaged``."""
    out = {}
    for key, value in averaged.items():
        if value.is_floating_point():
            kept = residual[key].to(value.device).double()
            out[key] = (alpha * value.double() + (1 - alpha) * kept).to(value.dtype)
        else:
            out[key] = value
    return out


def residual_step(round: int, stage_start: int, period: int, alpha: float, averaged: Weights,
                  residual: Weights | None) -> tuple[Weights, Weights]:
    """The server step's residual connection: (the new global weights, the model kept for the next mix).

    At the first round of a stage (or with nothing kept) the average is kept as it is; every
    ``period`` rounds after it, the average is mixed with the kept model and the mix is kept."""
    if residual is None or round == stage_start:
        return averaged, averaged
    if (round - stage_start) % period == 0:
        mixed = residual_mix(averaged, residual, alpha)
        return mixed, mixed
    return averaged, residual


# ---------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    tau: torch.Tensor | None = None  # (C,) thresholds for the next round, from the last round's counts
    residual: dict[str, torch.Tensor] | None = None  # the model kept at the last residual mix (CPU)


class CBAFed(Method):
    # counts: clean positives per class (summed over local epochs by the official variant)
    payloads = {"train": {"counts": Entry(torch.float32, ("C",), minimum=0)}}

    def __init__(self, name: str, config: CBAFedConfig):
        self.name = name
        self.config = config
        self.server = ServerState()

    @property
    def official(self) -> bool:
        return self.config.variant == "official-code"

    def first_stage2_round(self, total_rounds: int) -> int:
        return warmup_rounds(total_rounds, self.config.warmup_fraction)

    # --- server side ---------------------------------------------------------------------------

    def broadcast_payload(self, server: ServerContext) -> dict[str, Any]:
        if server.round < self.first_stage2_round(server.total_rounds) or self.server.tau is None:
            return {}
        return {"tau": self.server.tau}

    def aggregate(self, server: ServerContext, updates: list[Upload]) -> Weights:
        counts = torch.stack([u.payload["counts"] for u in updates]).sum(0)
        config = self.config
        self.server.tau = thresholds(counts, config.tau_base, config.tau_min, config.tau_max)
        start = self.first_stage2_round(server.total_rounds)
        stage2 = server.round >= start
        weights, kept = residual_step(server.round, start if stage2 else 0, config.residual_period,
                                      config.residual_stage2 if stage2 else config.residual_warmup,
                                      server.average(updates), self.server.residual)
        if kept is not self.server.residual:
            self.server.residual = {k: v.detach().cpu().clone() for k, v in kept.items()}
        return weights

    # --- client side ---------------------------------------------------------------------------

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        n_classes = client.observed.shape[1]
        pos_weight = (positive_weights(client.observed, client.annotated) if self.config.pos_weight or self.official
                      else torch.ones(n_classes))
        return {
            "pos_weight": pos_weight,
            "pseudo": torch.full(client.observed.shape, UNLABELLED, dtype=torch.int8),
            "counts": torch.zeros(n_classes),
            "thresholds": {},
        }

    def _stage2(self, ctx: LocalContext) -> bool:
        return ctx.round >= self.first_stage2_round(ctx.total_rounds)

    def _tau(self, ctx: LocalContext) -> torch.Tensor:
        """The broadcast thresholds; without any (a run started in stage 2), those of uniform counts."""
        tau = ctx.payload.get("tau")
        if tau is None:
            c = self.config
            tau = thresholds(torch.ones(ctx.client.observed.shape[1]), c.tau_base, c.tau_min, c.tau_max)
        return tau

    def before_training(self, ctx: LocalContext) -> None:
        state = ctx.state
        state["counts"] = torch.zeros(ctx.client.observed.shape[1], device=ctx.runtime.device)
        state["pseudo"].fill_(UNLABELLED)
        state["thresholds"] = {}
        if not self._stage2(ctx):
            return
        tau = self._tau(ctx)
        missing = torch.nonzero(ctx.client.missing).flatten().tolist()
        state["thresholds"] = {c: (1 - float(tau[c]), float(tau[c])) for c in missing}
        if not self.official:
            state["pseudo"] = select_pseudo(self.label_pass(ctx), ctx.client.missing, tau)

    @torch.inference_mode()
    def label_pass(self, ctx: LocalContext, batch_size: int = 256) -> torch.Tensor:
        """Sigmoid outputs (N, C) on the CPU of the received global model (eval mode) over the client's images."""
        out = []
        for _, images in iterate_rows(ctx.store, ctx.client.rows, batch_size, ctx.runtime.device):
            with ctx.runtime.autocast():
                logits = ctx.teacher(ctx.augment(images, self.config.pseudo_view))
            out.append(torch.sigmoid(logits.float()).cpu())
        return torch.cat(out)

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        logits = ctx.model(ctx.augment(batch.images)).float()
        state, annotated = ctx.state, batch.annotated
        pos_weight = state["pos_weight"].to(logits.device)
        stage2 = self._stage2(ctx)
        if not stage2:
            bce = F.binary_cross_entropy_with_logits(logits, batch.observed, pos_weight=pos_weight, reduction="none")
            if self.official:
                state["counts"] += entry_counts(len(logits), annotated)
            return masked_mean(bce, annotated[None, :].expand_as(bce))
        if not self.official:
            pseudo = state["pseudo"][batch.positions].to(logits.device)
            return clean_loss(logits, batch.observed, annotated, pos_weight, pseudo)
        loss, pseudo = official_loss(logits, batch.observed, annotated, pos_weight, self._tau(ctx).to(logits.device))
        state["counts"] += entry_counts(len(logits), annotated, pseudo != UNLABELLED)
        state["pseudo"][batch.positions] = pseudo.cpu()  # the last labels each image got, for the diagnostics
        return loss

    def _counts(self, ctx: LocalContext) -> torch.Tensor:
        if self.official:
            return ctx.state["counts"].cpu()
        return positive_counts(ctx.client.observed, ctx.state["pseudo"])

    def aggregation_weight(self, ctx: LocalContext) -> float | None:
        if not self._stage2(ctx):
            return None  # stage 1: the number of images
        if self.official:
            return float(ctx.state["counts"].sum())
        return labelled_entries(len(ctx.client), ctx.client.annotated, ctx.state["pseudo"])

    def upload_payload(self, ctx: LocalContext) -> dict[str, Any]:
        if self._stage2(ctx):
            record_pseudo_gates(ctx.state, ctx.state["pseudo"], ctx.client.missing)
        counts = self._counts(ctx)
        ctx.state["counts"] = counts  # at rest on the CPU
        return {"counts": counts}


@register("cbafed", display="CBAFed", section="cbafed", config=CBAFedConfig,
          summary="CBAFed: fixed pseudo-labels for missing classes under class-balanced thresholds, residual averaging")
def _cbafed(settings: dict) -> Method:
    return CBAFed("cbafed", from_dict(CBAFedConfig, settings, "cbafed"))
