"""Large Loss Matters (Kim et al., CVPR 2022) for missing classes: LL-R and LL-Ct on FedAvg
(docs/baselines.md § Large Loss Matters).

Every missing entry is trained as a negative, as in ``fedavg-partial``, except the largest-loss
missing entries of each batch: a false negative (a missing class that is present) is memorised late,
so early on it is among the largest losses. Per batch, with BCE L_ic = BCE(z_ic, y_ic) (y = 0 on
missing classes):

- k = min(⌈ρ_r · B · C⌉, B · |M|): the paper's budget, a share ρ_r of *all* B × C entries, chosen
  only among the B · |M| missing ones;
- treated: the missing entries whose L is at least the k-th largest missing L (ties included, as
  in the published code); none for k = 0;
- LL-R rejects them (their term is 0), LL-Ct flips them to positive for this step (BCE(z, 1 − y));
- loss: the sum over all B × C terms / (B · C) (the paper's mean; rejected entries stay in the
  divisor), or with ``normalisation: kept`` / the number of entries not rejected.

The rate ρ_r of round r (from 0; :func:`treated_rate`) is the paper's schedule (ρ = (t − 1) · δ in
epoch t of E = 10) stretched over the R rounds: the first ⌈R / E⌉ rounds (the paper's first epoch)
treat nothing, then ρ grows linearly by the same step each round up to (E − 1) · δ, the paper's
last-epoch rate, at the last round. With R = E it is the paper's schedule, one round per epoch.

No server step beyond FedAvg, no message beyond the weights. Gate rate per round
(:func:`~fedmlp.methods.base.record_gate`): ``rejected`` (LL-R) or ``flipped`` (LL-Ct), the share of
the round's missing entries (over all its batches) that were treated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.loader import Batch
from fedmlp.methods.base import LocalContext, Method, record_gate
from fedmlp.methods.registry import register
from fedmlp.schema import setting

SECTION = "largeloss"


@dataclass(frozen=True)
class LargeLossConfig:
    """Large Loss Matters, LL-R and LL-Ct (docs/baselines.md § Large Loss Matters): the largest-loss
    missing entries of each batch are rejected from the loss or flipped to positive."""

    delta_rel_r: float = setting(
        0.1, "LL-R: δ, the paper's growth of the treated rate in % of a batch's B × C entries per epoch of its "
             "schedule (0.1 chosen on validation by config/tuning.yaml; the paper's COCO / NUS-WIDE value: 0.4). Here the rate grows each round after the warm-up by "
             "(schedule_epochs − 1) · δ / (train.rounds − warm-up rounds) %, reaching the paper's last-epoch rate "
             "(schedule_epochs − 1) · δ % at the last round.", minimum=0, maximum=100)
    delta_rel_ct: float = setting(
        0.4, "LL-Ct: δ as for delta_rel_r (0.4 chosen on validation by config/tuning.yaml; the paper's COCO / NUS-WIDE "
             "value for LL-Ct: 0.2).", minimum=0, maximum=100)
    schedule_epochs: int = setting(
        10, "E, the length in epochs of the paper's schedule that the run is mapped onto: its first epoch, the first "
            "⌈train.rounds / E⌉ rounds (a share 1/E of train.rounds), treats nothing; the last round's rate is "
            "(E − 1) · δ %.", minimum=2, maximum=1000)
    normalisation: Literal["all", "kept"] = setting(
        "all", "Divisor of the summed loss: all: B · C, rejected entries included (the paper's mean); kept: the "
               "entries not rejected (LL-R only; LL-Ct rejects nothing).")


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def treated_rate(round: int, total_rounds: int, delta_rel: float, schedule_epochs: int) -> float:
    """ρ of ``round`` (counted from 0), a share of a batch's B × C entries: 0 in the first
    W = ⌈R / E⌉ rounds, then (E − 1) · δ/100 · (round − W + 1) / (R − W), capped at 1."""
    warmup = math.ceil(total_rounds / schedule_epochs)
    if round < warmup:
        return 0.0
    final = (schedule_epochs - 1) * delta_rel / 100
    return min(1.0, final * (round - warmup + 1) / (total_rounds - warmup))


def budget(rate: float, batch_size: int, n_classes: int, n_missing: int) -> int:
    """k = min(⌈ρ · B · C⌉, B · |M|): how many missing entries of a batch are treated."""
    return min(math.ceil(rate * batch_size * n_classes), batch_size * n_missing)


def large_loss_mask(losses: torch.Tensor, missing: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C) bool: the missing entries whose loss is at least the k-th largest loss of a missing
    entry (ties at it included); only ever missing entries, none for k = 0."""
    losses = losses.detach()
    candidates = losses[:, missing]
    if k <= 0 or candidates.numel() == 0:
        return torch.zeros_like(losses, dtype=torch.bool)
    threshold = candidates.flatten().topk(min(k, candidates.numel())).values[-1]
    return (losses >= threshold) & missing[None, :]


def treat(bce: torch.Tensor, logits: torch.Tensor, observed: torch.Tensor, treated: torch.Tensor, correct: bool,
          normalisation: str = "all") -> torch.Tensor:
    """The loss from the per-entry BCE: the ``treated`` entries rejected (0) or, with ``correct``,
    flipped (BCE(z, 1 − y)); summed and divided by B · C (``all``) or by the entries not rejected
    (``kept``)."""
    if correct:
        flipped = F.binary_cross_entropy_with_logits(logits, 1 - observed, reduction="none")
        return torch.where(treated, flipped, bce).mean()
    terms = bce.masked_fill(treated, 0.0)
    if normalisation == "kept":
        return terms.sum() / (~treated).sum().clamp(min=1)
    return terms.mean()


# ---------------------------------------------------------------------------------------------


class LargeLoss(Method):
    def __init__(self, name: str, config: LargeLossConfig, correct: bool):
        self.name = name
        self.config = config
        self.correct = correct
        self.delta_rel = config.delta_rel_ct if correct else config.delta_rel_r
        self.gate = "flipped" if correct else "rejected"

    def before_training(self, ctx: LocalContext) -> None:
        """The round's rate (one schedule for every client, from the round alone) and gate counters."""
        ctx.memo["rate"] = treated_rate(ctx.round, ctx.total_rounds, self.delta_rel, self.config.schedule_epochs)
        ctx.memo["n_missing"] = int(ctx.client.missing.sum())
        ctx.memo["treated"], ctx.memo["entries"] = 0, 0

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        logits = ctx.model(ctx.augment(batch.images)).float()
        bce = F.binary_cross_entropy_with_logits(logits, batch.observed, reduction="none")
        size, n_missing = logits.shape[0], ctx.memo["n_missing"]
        ctx.memo["entries"] += size * n_missing
        k = budget(ctx.memo["rate"], size, logits.shape[1], n_missing)
        if k == 0:  # ρ = 0 (the warm-up rounds): fedavg-partial's loss, bit for bit
            return bce.mean()
        treated = large_loss_mask(bce, ~batch.annotated, k)
        ctx.memo["treated"] = treated.sum() + ctx.memo["treated"]  # on the device until after_training
        return treat(bce, logits, batch.observed, treated, self.correct, self.config.normalisation)

    def after_training(self, ctx: LocalContext) -> None:
        """Record the round's share of missing entries treated (one sync per round)."""
        if ctx.memo["entries"] > 0:
            record_gate(ctx.state, self.gate, float(ctx.memo["treated"]) / ctx.memo["entries"])


@register("ll-r", display="LL-R", section=SECTION, config=LargeLossConfig,
          summary="Large Loss Matters, rejection: missing classes as negatives, the largest-loss ones left out of the loss")
def _reject(settings: dict[str, Any]) -> Method:
    return LargeLoss("ll-r", from_dict(LargeLossConfig, settings, SECTION), correct=False)


@register("ll-ct", display="LL-Ct", section=SECTION, config=LargeLossConfig,
          summary="Large Loss Matters, temporary correction: missing classes as negatives, the largest-loss ones "
                  "flipped to positive for that step")
def _correct(settings: dict[str, Any]) -> Method:
    return LargeLoss("ll-ct", from_dict(LargeLossConfig, settings, SECTION), correct=True)
