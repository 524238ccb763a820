"""FedLSR (Jiang et al., CIKM 2022): local self-regularisation against noisy labels, for missing classes.

Missing classes are stored as 0 and treated as noisy negatives; each client regularises its own
training so that it does not fit them too closely (docs/baselines.md § FedLSR). Per batch, two views
of each image go through the model in one forward (logits z¹, z²):

- implicit regularisation: the two views' predictions are mixed with m ~ Beta(1, 1) (one draw per
  batch), p̄ = m·σ(z¹) + (1 − m)·σ(z²), sharpened, p_s = p̄^(1/T) / (p̄^(1/T) + (1 − p̄)^(1/T)) with
  T = 1/2, and fitted to the observed labels of every class by BCE on probabilities;
- explicit regularisation: self-distillation between the views, β_t · JS(σ(z¹/T_d), σ(z²/T_d))
  with the Bernoulli Jensen–Shannon divergence summed over classes, T_d = 1/3, and β_t rising
  linearly from 0 to β_max over the first rounds;
- optionally (``entropy_reg``) the entropy of those sharpened predictions, minimised.

The server is plain FedAvg. Cost per step: the two views in one forward and one backward of 2B
images, i.e. 2 forward/backward passes per image (FedMLP: 2 views + a no-grad teacher forward).

``variant: official-code`` runs what the published FedMLP code runs: BCE-with-logits applied to the
already-sigmoided p_s (a second sigmoid), its JS without the (1 − q) terms and averaged over all
entries, the ramp over 40 of 500 rounds (8 % of the run), pos_weight N/n⁺ and no entropy term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.loader import Batch, ClientData
from fedmlp.methods.base import LocalContext, Method
from fedmlp.methods.common import positive_weights, sharpen
from fedmlp.methods.registry import register
from fedmlp.schema import setting

# The published code's ramp: 40 rounds of its 500.
OFFICIAL_RAMP_FRACTION = 40 / 500
CLAMP = 1e-6  # probabilities in the divergence are kept in [CLAMP, 1 − CLAMP]


@dataclass(frozen=True)
class FedLSRConfig:
    """FedLSR (docs/baselines.md § FedLSR): mixed, sharpened two-view predictions fitted to the observed
    labels (missing = 0, as noisy labels), plus a ramped self-distillation between the views."""

    beta_max: float = setting(0.2, "Weight of the self-distillation term after its ramp (β_max; 0.2 chosen on validation by config/tuning.yaml, docs/results/tuning; 0.4 before).",
                              minimum=0)
    ramp_fraction: float = setting(
        0.1, "The self-distillation weight rises linearly from 0 to beta_max over the first "
        "max(1, round(ramp_fraction × rounds)) rounds (t_w; 0: no ramp; 0.1 chosen on validation by config/tuning.yaml, docs/results/tuning, 0.2 before). variant official-code uses "
        "0.08 (40 of 500).",
        minimum=0, maximum=1)
    distill_temperature: float = setting(1 / 3, "T_d: the views' predictions σ(z / T_d) compared by the divergence.",
                                         exclusiveMinimum=0)
    sharpen_temperature: float = setting(
        0.5, "T of the sharpening of the mixed prediction, p^(1/T) / (p^(1/T) + (1 − p)^(1/T)).", exclusiveMinimum=0, maximum=1)
    entropy_reg: bool = setting(False, "Add the entropy of the views' predictions σ(z / T_d), minimised (the original "
                                       "notebook's term; not in the published FedMLP code, ignored by variant official-code).")
    entropy_weight: float = setting(0.6, "λ_e: weight of the entropy term when entropy_reg is on.", minimum=0)
    pos_weight: bool = setting(False, "Weight the positive term of each annotated class by N / n⁺ (client size over its "
                                      "observed positives; 1 for missing classes). variant official-code turns it on.")
    variant: Literal["clean", "official-code"] = setting(
        "clean", "official-code: the published FedMLP code's loss (double sigmoid, its JS, 8 % ramp, pos_weight, "
        "no entropy term; see docs/baselines.md § FedLSR).")


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def mixed_prediction(z1: torch.Tensor, z2: torch.Tensor, mix: float) -> torch.Tensor:
    """p̄ = m·σ(z¹) + (1 − m)·σ(z²)."""
    return mix * torch.sigmoid(z1) + (1 - mix) * torch.sigmoid(z2)


def entry_weights(targets: torch.Tensor, pos_weight: torch.Tensor | None) -> torch.Tensor | None:
    """pos_weight as per-entry weights for hard 0/1 targets: w_c where y = 1, 1 where y = 0."""
    return None if pos_weight is None else 1 + (pos_weight - 1) * targets


def fit_loss(p_s: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None, double_sigmoid: bool) -> torch.Tensor:
    """The CE term, averaged over all B × C entries. Clean: BCE on the probabilities p_s. Published
    code: BCE-with-logits applied to p_s, i.e. to σ(p_s) ∈ (1/2, 0.73)."""
    if double_sigmoid:
        return F.binary_cross_entropy_with_logits(p_s, targets, pos_weight=pos_weight)
    return F.binary_cross_entropy(p_s, targets, weight=entry_weights(targets, pos_weight))


def js_bernoulli(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Jensen–Shannon divergence between Bernoulli(q1) and Bernoulli(q2) per entry, summed over
    classes and averaged over the batch; probabilities clamped to [1e-6, 1 − 1e-6]."""
    q1, q2 = q1.clamp(CLAMP, 1 - CLAMP), q2.clamp(CLAMP, 1 - CLAMP)
    mean = (q1 + q2) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        return a * (a.log() - mean.log()) + (1 - a) * (torch.log1p(-a) - torch.log1p(-mean))

    return ((kl(q1) + kl(q2)) / 2).sum(1).mean()


def js_official(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """The published code's divergence: ½[mean(q1·log(q1/q̄)) + mean(q2·log(q2/q̄))] over all B × C
    entries, with q clamped to [1e-6, 1] and no (1 − q) terms (not a divergence between Bernoullis)."""
    q1, q2 = q1.clamp(CLAMP, 1), q2.clamp(CLAMP, 1)
    log_mean = ((q1 + q2) / 2).log()
    return ((q1 * (q1.log() - log_mean)).mean() + (q2 * (q2.log() - log_mean)).mean()) / 2


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of σ(z) per entry, from the logits: softplus(z) − σ(z)·z (stable for any z)."""
    return F.softplus(logits) - torch.sigmoid(logits) * logits


def ramp_rounds(fraction: float, total_rounds: int) -> int:
    """t_w: the ramp's length in rounds, round(fraction × total), at least 1 (0 for no ramp)."""
    return 0 if fraction <= 0 else max(1, math.floor(fraction * total_rounds + 0.5))


def distill_weight(round: int, ramp: int, beta_max: float) -> float:
    """β_t = β_max · t / t_w for rounds t < t_w (counted from 0), then β_max."""
    return beta_max if round >= ramp else beta_max * round / ramp


# ---------------------------------------------------------------------------------------------


class FedLSR(Method):
    def __init__(self, name: str, config: FedLSRConfig):
        self.name = name
        self.config = config
        official = config.variant == "official-code"
        self.official = official
        self.ramp_fraction = OFFICIAL_RAMP_FRACTION if official else config.ramp_fraction
        self.use_pos_weight = config.pos_weight or official
        self.entropy = config.entropy_reg and not official

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {"pos_weight": positive_weights(client.observed, client.annotated)}

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        config = self.config
        images = torch.cat([ctx.augment(batch.images), ctx.augment(batch.images)])  # two views, one forward
        mix = float(torch.rand(1, generator=ctx.generator))  # m ~ Beta(1, 1), which is U(0, 1); one per batch
        logits = ctx.model(images).float()
        # BCE on probabilities is not autocast-safe: everything from here on in float32.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            z1, z2 = logits.float().chunk(2)
            targets = batch.observed.float()
            pos_weight = ctx.state["pos_weight"].to(logits.device) if self.use_pos_weight else None
            p_s = sharpen(mixed_prediction(z1, z2, mix), config.sharpen_temperature)
            loss = fit_loss(p_s, targets, pos_weight, double_sigmoid=self.official)
            beta = distill_weight(ctx.round, ramp_rounds(self.ramp_fraction, ctx.total_rounds), config.beta_max)
            scale = 1 / config.distill_temperature
            if beta > 0:
                q1, q2 = torch.sigmoid(z1 * scale), torch.sigmoid(z2 * scale)
                loss = loss + beta * (js_official(q1, q2) if self.official else js_bernoulli(q1, q2))
            if self.entropy and config.entropy_weight > 0:
                entropy = (binary_entropy(z1 * scale).sum(1).mean() + binary_entropy(z2 * scale).sum(1).mean()) / 2
                loss = loss + config.entropy_weight * entropy
        return loss


@register("fedlsr", display="FedLSR", section="fedlsr", config=FedLSRConfig,
          summary="FedLSR: mixed sharpened two-view predictions + ramped self-distillation (missing = noisy 0)")
def _fedlsr(settings: dict[str, Any]) -> Method:
    return FedLSR("fedlsr", from_dict(FedLSRConfig, settings, "fedlsr"))
