"""FedAvg + FixMatch (Sohn et al., NeurIPS 2020) for missing classes: pseudo-labels from a weak view
train a strong view, on the classes a client does not annotate (docs/baselines.md § FedAvg + FixMatch).

Per batch, a weak view (``weak`` policy) and a strong view (RandAugment + Cutout, the ``strong``
policy of :mod:`fedmlp.augment`) go through the model in one forward (logits z^w, z^s):

- supervised: BCE of z^w on the annotated classes, averaged over the B × |A| entries;
- pseudo-labels ŷ = 1[σ(z^w) > 1/2] (no gradient), kept per entry where the weak prediction is
  confident, m_ic = 1[p_ic > τ⁺ or p_ic < τ⁻] for missing classes c (τ± = 0.8 / 0.2);
- unsupervised: Σ m_ic · BCE(z^s_ic, ŷ_ic) / (B · |M|), FixMatch's average over all samples, masked
  entries included; weight λ_u = 1.

The server is plain FedAvg. Cost per step: one forward and one backward of 2B images (weak and
strong view), i.e. 2 forward/backward passes per image, plus the strong augmentation (elementwise
batch operations on the device). Gate rate (:func:`~fedmlp.methods.base.record_gate`) per round:
``pseudo``, the share of missing entries that were given a pseudo-label.

``variant: official-code`` runs what the published FedMLP code runs: a sample is pseudo-labelled only
if *every* missing class is confident (an AND gate), the unsupervised sum is divided by |I| · |M|
(I the samples that pass), Cutout is a fixed 16-px square, and the supervised term has pos_weight N/n⁺.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedmlp.augment import strong
from fedmlp.config import from_dict
from fedmlp.loader import Batch, ClientData
from fedmlp.methods.base import LocalContext, Method, record_gate
from fedmlp.methods.common import positive_weights
from fedmlp.methods.registry import register
from fedmlp.schema import setting

log = logging.getLogger(__name__)

LABEL_THRESHOLD = 0.5  # ŷ = 1[p > 1/2]; with τ⁻ < 1/2 < τ⁺ it only matters for entries the mask leaves out
OFFICIAL_CUTOUT_PIXELS = 16  # FixMatch's CIFAR value (half of a 32-px image), which the published code keeps


@dataclass(frozen=True)
class FixMatchConfig:
    """FedAvg + FixMatch (docs/baselines.md § FedAvg + FixMatch): weak-view pseudo-labels on missing
    classes, where confident, train the strong view."""

    threshold_high: float = setting(0.9, "τ⁺: a missing entry with weak-view probability above it gets pseudo-label 1 "
                                          "(0.9 chosen on validation by config/tuning.yaml, docs/results/tuning; 0.8 before).",
                                    exclusiveMinimum=0.5, maximum=1)
    threshold_low: float = setting(0.1, "τ⁻: a missing entry with weak-view probability below it gets pseudo-label 0 "
                                         "(0.1 chosen on validation by config/tuning.yaml, docs/results/tuning; 0.2 before).",
                                   minimum=0, exclusiveMaximum=0.5)
    lambda_u: float = setting(1.0, "λ_u: weight of the unsupervised (pseudo-label) term.", minimum=0)
    gate: Literal["entry", "sample"] = setting(
        "entry", "entry: each confident missing entry is used; sample: a sample is used only if all its missing classes "
        "are confident (the published code's AND gate).")
    normalisation: Literal["batch", "selected"] = setting(
        "batch", "Divisor of the unsupervised sum: batch: B · |M| (FixMatch, masked entries count); selected: |I| · |M|, "
        "I the samples with at least one pseudo-label (the published code).")
    randaugment_ops: int = setting(2, "RandAugment operations per strong view (n).", minimum=0, maximum=8)
    randaugment_magnitude: float = setting(10.0, "RandAugment's largest magnitude m on its 0–10 scale: each operation draws "
                                                 "its magnitude uniformly in [1, m) / 10.", minimum=1, maximum=10)
    cutout_fraction: float = setting(0.5, "Cutout square side, uniform in [0, cutout_fraction) × the image side "
                                          "(variant official-code: a fixed 16 px).", minimum=0, maximum=1)
    pos_weight: bool = setting(False, "Weight the positive term of each annotated class in the supervised BCE by N / n⁺ "
                                      "(client size over its observed positives). variant official-code turns it on.")
    variant: Literal["clean", "official-code"] = setting(
        "clean", "official-code: the published FedMLP code's version (sample AND gate, |I|·|M| normalisation, 16-px "
        "Cutout, pos_weight; see docs/baselines.md § FedAvg + FixMatch).")


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def pseudo_labels(probabilities: torch.Tensor) -> torch.Tensor:
    """ŷ = 1[p > 1/2], as floats."""
    return (probabilities > LABEL_THRESHOLD).to(probabilities.dtype)


def confidence_mask(probabilities: torch.Tensor, missing: torch.Tensor, high: float, low: float,
                    gate: str = "entry") -> torch.Tensor:
    """Which (sample, class) entries get a pseudo-label: (B, C) bool, only ever on missing classes.

    ``entry``: p > high or p < low, entry by entry. ``sample``: every missing entry of a sample that
    is confident on all of its missing classes (the published code's AND gate)."""
    confident = (probabilities > high) | (probabilities < low)
    missing = missing[None, :].expand_as(confident)
    if gate == "sample":
        passes = (confident | ~missing).all(dim=1, keepdim=True) & missing.any(dim=1, keepdim=True)
        return passes & missing
    return confident & missing


def supervised_loss(logits: torch.Tensor, observed: torch.Tensor, annotated: torch.Tensor,
                    pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE on the annotated classes, averaged over the B × |A| entries (0 without annotated classes)."""
    bce = F.binary_cross_entropy_with_logits(logits, observed, pos_weight=pos_weight, reduction="none")
    mask = annotated[None, :].to(bce.dtype)
    return (bce * mask).sum() / (mask.sum() * logits.shape[0]).clamp(min=1)


def unsupervised_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, missing: torch.Tensor,
                      normalisation: str = "batch") -> torch.Tensor:
    """Σ m_ic · BCE(z_ic, ŷ_ic) / (n · |M|) with n = B (``batch``) or n = the samples with at least one
    pseudo-label (``selected``); 0 when nothing is confident."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    mask = mask.to(bce.dtype)
    rows = bce.new_tensor(logits.shape[0]) if normalisation == "batch" else (mask.amax(1) > 0).sum()
    return (bce * mask).sum() / (rows * missing.sum()).clamp(min=1)


# ---------------------------------------------------------------------------------------------


class FedAvgFixMatch(Method):
    def __init__(self, name: str, config: FixMatchConfig):
        self.name = name
        self.config = config
        official = config.variant == "official-code"
        self.official = official
        self.gate = "sample" if official else config.gate
        self.normalisation = "selected" if official else config.normalisation
        self.cutout_pixels = OFFICIAL_CUTOUT_PIXELS if official else None
        self.use_pos_weight = config.pos_weight or official

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {"pos_weight": positive_weights(client.observed, client.annotated)}

    def before_training(self, ctx: LocalContext) -> None:
        ctx.state["counts"] = None  # this local update's (masked, entries), on the device until after_training

    def strong_view(self, ctx: LocalContext, images: torch.Tensor) -> torch.Tensor:
        config = self.config
        return strong(images, ctx.train.augment, ctx.generator, n_ops=config.randaugment_ops,
                      magnitude=config.randaugment_magnitude, cutout_fraction=config.cutout_fraction,
                      cutout_pixels=self.cutout_pixels)

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        config = self.config
        images = torch.cat([ctx.augment(batch.images, "weak"), self.strong_view(ctx, batch.images)])  # one forward
        z_weak, z_strong = ctx.model(images).float().chunk(2)
        missing = ~batch.annotated
        probabilities = torch.sigmoid(z_weak.detach())
        mask = confidence_mask(probabilities, missing, config.threshold_high, config.threshold_low, self.gate)
        pos_weight = ctx.state["pos_weight"].to(z_weak.device) if self.use_pos_weight else None
        loss = supervised_loss(z_weak, batch.observed, batch.annotated, pos_weight)
        if config.lambda_u > 0:
            unsupervised = unsupervised_loss(z_strong, pseudo_labels(probabilities), mask, missing, self.normalisation)
            loss = loss + config.lambda_u * unsupervised
        counts = torch.stack([mask.sum(), missing.sum() * mask.shape[0]])
        ctx.state["counts"] = counts if ctx.state["counts"] is None else ctx.state["counts"] + counts
        return loss

    def after_training(self, ctx: LocalContext) -> None:
        """Record the round's mask rate as its gate rate (one sync per round)."""
        counts = ctx.state.pop("counts")
        if counts is not None and int(counts[1]) > 0:
            rate = float(counts[0]) / int(counts[1])
            record_gate(ctx.state, "pseudo", rate)
            log.debug("%s client %d round %d: mask rate %.3f", self.name, ctx.client.client_id, ctx.round + 1, rate)


@register("fedavg-fixmatch", display="FedAvg+FixMatch", section="fedavg_fixmatch", config=FixMatchConfig,
          summary="FedAvg + FixMatch: confident weak-view pseudo-labels on missing classes train the strong view")
def _fixmatch(settings: dict[str, Any]) -> Method:
    return FedAvgFixMatch("fedavg-fixmatch", from_dict(FixMatchConfig, settings, "fedavg_fixmatch"))
