"""FedLSM (Deng, Luo & Chen, MICCAI 2023) for missing classes, as docs/baselines.md § FedLSM describes it.

Client, each round, with the received global model (``ctx.teacher``, frozen, eval mode):

1. one pass over the client's images without augmentation gives p_ic; an image's uncertainty is the
   mean binary entropy of p_ic over its missing classes M (``score: code`` uses the published code's
   Σ_{c∈M} −p ln p / C). The most uncertain ``uncertain_fraction`` of the images form U, the most
   certain ``confident_fraction`` form Cf, the rest (Cf included) P;
2. the same pass gives the estimated disease distribution (EDD): per class, the observed positives if
   the client annotates it, else the images with p_ic ≥ τ_p; it is uploaded (C counts);
3. per batch, the images of P: teacher on a weak view, student on a strong view; targets are the
   observed labels on annotated classes and hard pseudo-labels on missing entries where the teacher is
   confident (p ≥ τ_p → 1, p ≤ τ_n → 0); L_P is the masked mean BCE over those entries;
4. the images of U in the batch are MixUp-ed with partners drawn from Cf (λ ~ Beta(α, α), one per
   batch, inverse-CDF from a uniform of ``ctx.generator``), targets mixed alike from the pass's p
   (pool thresholds 0.7 / 0.005); L_U is the masked mean BCE over entries confident in both images;
5. L = L_P + λ_u · L_U.

Server: the backbone is FedAvg-ed by n_k; each row c of the classifier head (weight and bias) is
averaged with weights EDD_kc / Σ_j EDD_jc (adaptive weighted proxy aggregation); a class no client
counts falls back to n_k over the clients that annotate it, and without those keeps the previous
global row. The server sees counts and which classes a client annotates, never a label.

Gate rate (:func:`~fedmlp.methods.base.record_gate`) per round: ``confident``, the share of the
missing entries of P's images that got a pseudo-label. Cost per step: one student forward/backward of
|P| strong views plus |U| mixed images, one teacher forward of |P| weak views; per round one teacher
pass over the client's images and a read of |U| partner images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.inference import predict_proba
from fedmlp.loader import Batch, ClientData, read_images
from fedmlp.methods.base import LocalContext, Method, ServerContext, record_gate, weighted_average
from fedmlp.methods.common import masked_mean, positive_weights
from fedmlp.methods.messages import Entry, Upload, Weights
from fedmlp.methods.registry import register
from fedmlp.schema import setting

log = logging.getLogger(__name__)

HEAD_KEYS = ("head.weight", "head.bias")  # the classifier layer: one row (a class "proxy") per class


@dataclass(frozen=True)
class FedLSMConfig:
    """FedLSM (docs/baselines.md § FedLSM): uncertainty-ranked pools from the received model, confident
    pseudo-labels on missing classes, MixUp of uncertain with confident images, class-wise head aggregation."""

    uncertain_fraction: float = setting(
        0.05, "Share of a client's images, the most uncertain on its missing classes, that are MixUp-ed instead of "
              "pseudo-labelled (the published code: 500 of about 9,500 per client).", minimum=0, maximum=0.5)
    confident_fraction: float = setting(
        0.2, "Share of a client's images, the least uncertain, that serve as MixUp partners (the published code: 2,000 "
             "of about 9,500).", minimum=0, maximum=0.5)
    score: Literal["entropy", "code"] = setting(
        "entropy", "Uncertainty of an image: entropy: mean binary entropy over its missing classes; code: the published "
                   "code's sum of −p ln p over the missing classes divided by all C classes.")
    threshold_high: float = setting(0.6, "τ_p: a missing entry with teacher probability at or above it gets pseudo-label 1 "
                                         "(and counts as a positive in the EDD; 0.6 chosen on validation by config/tuning.yaml, docs/results/tuning; FedLSM's own: 0.85).", exclusiveMinimum=0.5, maximum=1)
    threshold_low: float = setting(0.01, "τ_n: a missing entry with teacher probability at or below it gets pseudo-label 0.",
                                   minimum=0, exclusiveMaximum=0.5)
    mix_threshold_high: float = setting(0.7, "Pseudo-label 1 threshold for the images of the MixUp pools.",
                                        exclusiveMinimum=0.5, maximum=1)
    mix_threshold_low: float = setting(0.005, "Pseudo-label 0 threshold for the images of the MixUp pools.",
                                       minimum=0, exclusiveMaximum=0.5)
    mixup_alpha: float = setting(0.2, "α of the MixUp weight λ ~ Beta(α, α).", exclusiveMinimum=0)
    lambda_u: float = setting(0.1, "λ_u: weight of the MixUp term of the uncertain images.", minimum=0)
    pos_weight: bool = setting(False, "Weight the positive term of each annotated class by N_k / n⁺ from the client's observed "
                                      "labels (the published code: a global ratio the server reads from raw labels).")
    awpa: bool = setting(True, "Class-wise head aggregation by the clients' EDD counts; false: FedAvg of every tensor.")


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def uncertainty(probabilities: torch.Tensor, missing: torch.Tensor, score: str = "entropy") -> torch.Tensor:
    """Per image (N,): mean binary entropy over the missing classes (``entropy``), or the published
    code's Σ_{c∈M} −p ln p / C (``code``); 0 without missing classes."""
    p = probabilities.double()
    if score == "code":
        return (torch.special.entr(p) * missing).sum(1) / p.shape[1]
    entropy = torch.special.entr(p) + torch.special.entr(1 - p)
    return (entropy * missing).sum(1) / missing.sum().clamp(min=1)


def pools(scores: torch.Tensor, uncertain_fraction: float, confident_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, Cf) as positions: the ⌈ρ_u N⌉ highest scores and the ⌈ρ_c N⌉ lowest of the others (disjoint;
    ties broken by position)."""
    n = len(scores)
    order = torch.sort(scores, descending=True, stable=True).indices
    n_u = min(n, math.ceil(uncertain_fraction * n))
    n_c = min(n - n_u, math.ceil(confident_fraction * n))
    return order[:n_u].sort().values, order[n - n_c:].sort().values


def estimated_distribution(probabilities: torch.Tensor, observed: torch.Tensor, annotated: torch.Tensor,
                           threshold: float) -> torch.Tensor:
    """EDD (C,): observed positives on annotated classes, images with p ≥ τ_p on missing ones."""
    return torch.where(annotated, observed.sum(0), (probabilities >= threshold).sum(0).to(observed.dtype))


def targets_and_mask(probabilities: torch.Tensor, observed: torch.Tensor, annotated: torch.Tensor,
                     high: float, low: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and training mask (B, C): observed labels on annotated classes (always trained); on
    missing classes 1 where p ≥ high, 0 where p ≤ low, untrained elsewhere."""
    annotated = annotated[None, :].expand_as(probabilities)
    positive, negative = probabilities >= high, probabilities <= low
    targets = torch.where(annotated, observed, positive.to(observed.dtype))
    return targets, annotated | positive | negative


def mix(lam: float, x_u: torch.Tensor, x_c: torch.Tensor, t_u: torch.Tensor, t_c: torch.Tensor,
        m_u: torch.Tensor, m_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MixUp of uncertain with confident images: λ x_U + (1 − λ) x_Cf, the targets alike; trained where
    both entries are (their masks' AND)."""
    return lam * x_u + (1 - lam) * x_c, lam * t_u + (1 - lam) * t_c, m_u & m_c


def head_aggregate(updates: list[Upload], previous: Weights) -> Weights:
    """FedAvg by n_k, then each head row c = Σ_k EDD_kc · row_kc / Σ_k EDD_kc; where Σ_k EDD_kc = 0,
    n_k over the clients annotating c, and without any the previous global row."""
    merged = weighted_average(updates)
    edd = torch.stack([torch.as_tensor(u.payload["edd"], dtype=torch.float64) for u in updates])  # (K, C)
    annotated = torch.stack([torch.as_tensor(u.payload["annotated"], dtype=torch.bool) for u in updates])
    sizes = torch.tensor([u.aggregation_weight for u in updates], dtype=torch.float64)[:, None]
    fallback = sizes * annotated  # (K, C)
    weights = torch.where(edd.sum(0) > 0, edd, fallback)
    total = weights.sum(0)
    keep = total == 0
    shares = weights / total.clamp(min=torch.finfo(torch.float64).tiny)
    for key in HEAD_KEYS:
        stacked = torch.stack([u.weights[key].double() for u in updates])  # (K, C) or (K, C, D)
        shape = (*shares.shape, *[1] * (stacked.dim() - 2))
        rows = (stacked * shares.to(stacked.device).view(shape)).sum(0)
        rows[keep.to(rows.device)] = previous[key].to(rows.device).double()[keep.to(rows.device)]
        merged[key] = rows.to(updates[0].weights[key].dtype)
    return merged


# ---------------------------------------------------------------------------------------------


class FedLSM(Method):
    payloads = {"train": {"edd": Entry(torch.float32, ("C",), minimum=0, maximum="N"), "annotated": Entry(torch.bool, ("C",))}}

    def __init__(self, name: str, config: FedLSMConfig):
        self.name = name
        self.config = config

    # --- server side ---------------------------------------------------------------------------

    def aggregate(self, server: ServerContext, updates: list[Upload]) -> Weights:
        if not self.config.awpa:
            return server.average(updates)
        previous = {k: v.detach().cpu() for k, v in server.global_model.state_dict().items() if k in HEAD_KEYS}
        return head_aggregate(updates, previous)

    # --- client side ---------------------------------------------------------------------------

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {"pos_weight": positive_weights(client.observed, client.annotated)}

    def before_training(self, ctx: LocalContext) -> None:
        """Score the client's images with the received model: pools, EDD, the MixUp pools' targets."""
        config, client = self.config, ctx.client
        probabilities = torch.from_numpy(predict_proba(ctx.teacher, ctx.store, client.rows, ctx.runtime))
        ctx.memo["edd"] = estimated_distribution(probabilities, client.observed, client.annotated, config.threshold_high)
        uncertain = torch.zeros(len(client), dtype=torch.bool)
        confident = torch.zeros(0, dtype=torch.long)
        if bool(client.missing.any()):
            scores = uncertainty(probabilities, client.missing, config.score)
            u, confident = pools(scores, config.uncertain_fraction, config.confident_fraction)
            uncertain[u] = True
        ctx.memo["uncertain"], ctx.memo["confident"] = uncertain, confident
        ctx.memo["pool_targets"] = targets_and_mask(probabilities, client.observed, client.annotated,
                                                    config.mix_threshold_high, config.mix_threshold_low)
        ctx.memo["counts"] = None  # this update's (confident missing entries, missing entries) of P

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        config, device = self.config, batch.images.device
        in_u = ctx.memo["uncertain"][batch.positions]
        p_images, p_observed = batch.images[(~in_u).to(device)], batch.observed[(~in_u).to(device)]
        inputs, n_p, teacher = [], len(p_images), None
        if n_p:
            inputs.append(ctx.augment(p_images, "strong"))
            with torch.inference_mode():  # the teacher is a constant target
                teacher = torch.sigmoid(ctx.teacher(ctx.augment(p_images, "weak")).float())
            teacher = teacher.clone()
        mixed = self.mixup_inputs(ctx, batch.positions[in_u]) if config.lambda_u > 0 else None
        if mixed is not None:
            inputs.append(mixed[0])
        if not inputs:  # every image of the batch is uncertain, with nothing to mix: no step (no gradient)
            return torch.zeros((), device=device, requires_grad=True)
        logits = ctx.model(torch.cat(inputs)).float()
        pos_weight = ctx.state["pos_weight"].to(device) if config.pos_weight else None
        loss = logits.new_zeros(())
        if teacher is not None:
            targets, mask = targets_and_mask(teacher, p_observed, batch.annotated, config.threshold_high, config.threshold_low)
            bce = F.binary_cross_entropy_with_logits(logits[:n_p], targets, pos_weight=pos_weight, reduction="none")
            loss = masked_mean(bce, mask)
            missing = ~batch.annotated[None, :].expand_as(mask)
            counts = torch.stack([(mask & missing).sum(), missing.sum()])
            ctx.memo["counts"] = counts if ctx.memo["counts"] is None else ctx.memo["counts"] + counts
        if mixed is not None:
            bce = F.binary_cross_entropy_with_logits(logits[n_p:], mixed[1], pos_weight=pos_weight, reduction="none")
            loss = loss + config.lambda_u * masked_mean(bce, mixed[2])
        return loss

    def mixup_inputs(self, ctx: LocalContext, uncertain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The batch's uncertain images (positions) mixed with partners drawn uniformly from Cf: images,
        targets and mask; None when either is empty."""
        confident = ctx.memo["confident"]
        if len(uncertain) == 0 or len(confident) == 0:
            return None
        from scipy import stats  # here, not at the top: every job lists the methods (0.8 CPU-s, most jobs not FedLSM's)

        partners = confident[torch.randint(len(confident), (len(uncertain),), generator=ctx.generator)]
        lam = float(stats.beta.ppf(float(torch.rand((), generator=ctx.generator)), self.config.mixup_alpha, self.config.mixup_alpha))
        device = ctx.runtime.device
        rows = ctx.client.rows
        x_u = ctx.augment(read_images(ctx.store, rows[uncertain.numpy()], device), "none")
        x_c = ctx.augment(read_images(ctx.store, rows[partners.numpy()], device), "none")
        targets, mask = ctx.memo["pool_targets"]
        return mix(lam, x_u, x_c, targets[uncertain].to(device), targets[partners].to(device),
                   mask[uncertain].to(device), mask[partners].to(device))

    def after_training(self, ctx: LocalContext) -> None:
        """Record the round's share of P's missing entries that were confident (one sync per round)."""
        counts = ctx.memo.pop("counts")
        if counts is not None and int(counts[1]) > 0:
            rate = float(counts[0]) / int(counts[1])
            record_gate(ctx.state, "confident", rate)
            log.debug("%s client %d round %d: confident share %.3f", self.name, ctx.client.client_id, ctx.round + 1, rate)

    def upload_payload(self, ctx: LocalContext) -> dict[str, Any]:
        return {"edd": ctx.memo["edd"].clone(), "annotated": ctx.client.annotated.clone()}


@register("fedlsm", display="FedLSM", section="fedlsm", config=FedLSMConfig,
          summary="FedLSM: uncertainty-ranked confident pseudo-labels and MixUp on missing classes, class-wise head aggregation by estimated counts")
def _fedlsm(settings: dict[str, Any]) -> Method:
    return FedLSM("fedlsm", from_dict(FedLSMConfig, settings, "fedlsm"))
