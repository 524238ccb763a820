"""RSCFed (Liang et al., CVPR 2022) for missing classes, as docs/baselines.md § RSCFed describes it.

Client: a student trained from the received global model with BCE on its annotated classes and a
mean-teacher consistency on its missing classes. The teacher is the client's own exponential moving
average (EMA) of its student, kept across rounds in the client state (CPU tensors at rest), loaded
into ``ctx.scratch`` for the round and updated after every optimiser step.

Server: "train once, reuse": every client trains once per round; the server then draws M random
groups of K uploads (``server.generator``), combines each group by distance-reweighted model
aggregation (DMA: a client far from its group's mean gets less weight) into a sub-consensus model,
and averages the M sub-consensus models uniformly into the global model.

Cost per step: one forward and backward pass of the student on view 1 and one no-grad forward pass
of the EMA teacher on view 2 (FedMLP: two views forward and backward, plus a teacher forward).
Server: per group one mean, K distances and one weighted mean over the uploaded weights.

Client state: the BCE positive weights, the EMA teacher's weights and its step counter. Server state:
the last round's groups and DMA weights (for reporting; nothing reads them back). Server gate
(:meth:`~fedmlp.methods.base.Method.server_gates`): ``dma_max_weight``, the largest DMA weight in each
group (1/K: an even average; near 1: the group keeps one model).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.loader import Batch, ClientData
from fedmlp.methods.base import LocalContext, Method, ServerContext
from fedmlp.methods.common import ema_alpha, ema_update_, local_ema_pairs, masked_mean, model_distance, positive_weights, sharpen
from fedmlp.methods.messages import Upload, Weights
from fedmlp.methods.registry import register
from fedmlp.schema import setting

log = logging.getLogger(__name__)

# The published code's DMA scale (instead of 1e4), used by variant official-code.
OFFICIAL_DIST_SCALE = 0.01


@dataclass(frozen=True)
class RSCFedConfig:
    """RSCFed (docs/baselines.md § RSCFed): sub-consensus models from random client groups, distance-reweighted
    aggregation, per-client EMA teacher on the missing classes."""

    lambda_u: float = setting(1.0, "Weight of the consistency to the EMA teacher on missing classes (the published code: 1; "
                                   "the original RSCFed: 0.02 on a class-summed loss).", minimum=0)
    sharpen: bool = setting(False, "Sharpen the teacher's probabilities (binary, temperature sharpen_temperature) before the "
                                   "consistency, as the original RSCFed; off in the published FedMLP code.")
    sharpen_temperature: float = setting(0.5, "T of the sharpening p^(1/T) / (p^(1/T) + (1 − p)^(1/T)).",
                                         exclusiveMinimum=0, maximum=1)
    ema_decay: float = setting(0.999, "EMA decay α of the per-client teacher (clean: min(1 − 1/(t + 1), α) at the client's "
                                      "step t, counted across rounds).", minimum=0, maximum=1)
    pos_weight: bool = setting(
        False, "Positive weight N_k / n⁺_kc in the BCE of annotated classes, from the client's observed labels (1 where a class has "
        "no positive); off by default like the FedAvg reference points; official-code turns it on, as the published code.")
    groups: int = setting(10, "M: sub-consensus groups per round.", minimum=1)
    group_size: int = setting(6, "Largest K (clients per group); K = min(group_size, ceil(group_fraction · N)).", minimum=1)
    group_fraction: float = setting(0.75, "K as a fraction of the N clients that trained, before the cap group_size "
                                          "(official-code: 1, i.e. K = min(group_size, N)).", exclusiveMinimum=0, maximum=1)
    dist_scale: float = setting(1.0, "β of the DMA weights ∝ (n_i / Σn) · exp(−β · d_i / n_i); 1 chosen on validation by config/tuning.yaml, docs/results/tuning (RSCFed's own: 1e4, "
                                "which keeps one model per group here; official-code: 0.01).",
                                minimum=0)
    variant: Literal["clean", "official-code"] = setting(
        "clean", "official-code: the published FedMLP code's RSCFed (uniform group mean, β = 0.01, distances over every "
                 "state-dict entry, K = min(group_size, N), EMA over the whole state dict without warm-start).")


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def group_size(n_clients: int, cap: int, fraction: float) -> int:
    """K = min(cap, ceil(fraction · N)), at least 1 and at most N."""
    return max(1, min(cap, n_clients, math.ceil(fraction * n_clients - 1e-9)))


def draw_groups(n_clients: int, n_groups: int, size: int, generator: torch.Generator) -> list[list[int]]:
    """``n_groups`` groups of ``size`` distinct indices in [0, n_clients), each drawn independently
    (a client may be in several groups), sorted within a group."""
    return [sorted(torch.randperm(n_clients, generator=generator)[:size].tolist()) for _ in range(n_groups)]


def weighted_mean(models: list[Weights], weights: torch.Tensor, keys: list[str]) -> dict[str, torch.Tensor]:
    """Σ_i w_i · model_i over ``keys`` in float64 (``weights`` sum to 1)."""
    out = {}
    for key in keys:
        acc = torch.zeros_like(models[0][key], dtype=torch.float64)
        for model, w in zip(models, weights.tolist()):
            acc += model[key].double() * w
        out[key] = acc
    return out


def dma_weights(distances: torch.Tensor, sizes: torch.Tensor, scale: float) -> torch.Tensor:
    """Distance-reweighted aggregation: w_i ∝ (n_i / Σn) · exp(−scale · d_i / n_i), normalised to sum
    to 1. Computed from log-weights with the largest subtracted before exp (a softmax), so that large
    exponents do not underflow every weight to 0; the result equals the plain formula wherever that
    one is representable."""
    sizes = sizes.double()
    logits = torch.log(sizes / sizes.sum()) - scale * distances.double() / sizes
    return torch.softmax(logits, dim=0)


# ---------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    groups: list[list[int]] = field(default_factory=list)  # the last round's groups (client ids)
    dma_weights: list[list[float]] = field(default_factory=list)  # and their DMA weights


class RSCFed(Method):
    def __init__(self, name: str, config: RSCFedConfig):
        self.name = name
        self.config = config
        self.official = config.variant == "official-code"
        self.server = ServerState()

    # --- server side ---------------------------------------------------------------------------

    def aggregate(self, server: ServerContext, updates: list[Upload]) -> Weights:
        config = self.config
        fraction = 1.0 if self.official else config.group_fraction
        k = group_size(len(updates), config.group_size, fraction)
        groups = draw_groups(len(updates), config.groups, k, server.generator)
        reference = updates[0].weights
        floating = [key for key, v in reference.items() if v.is_floating_point()]
        distance_keys = list(reference) if self.official else floating
        scale = OFFICIAL_DIST_SCALE if self.official else config.dist_scale
        total = {key: torch.zeros_like(reference[key], dtype=torch.float64) for key in floating}
        all_weights = []
        for group in groups:
            models = [updates[i].weights for i in group]
            sizes = torch.tensor([float(updates[i].n_samples) for i in group], dtype=torch.float64)
            mean_weights = torch.full_like(sizes, 1 / len(group)) if self.official else sizes / sizes.sum()
            mean = weighted_mean(models, mean_weights, distance_keys)
            distances = torch.tensor([model_distance(m, mean, distance_keys) for m in models], dtype=torch.float64)
            weights = dma_weights(distances, sizes, scale)
            sub = weighted_mean(models, weights, floating)
            for key in floating:
                total[key] += sub[key] / len(groups)
            all_weights.append(weights.tolist())
        self.server = ServerState([[updates[i].client_id for i in g] for g in groups], all_weights)
        log.debug("rscfed round %d: groups %s, DMA weights %s", server.round + 1, self.server.groups, all_weights)
        merged = {}
        for key, value in reference.items():
            if key in total:
                merged[key] = total[key].to(value.dtype)
            else:  # integer buffers such as BatchNorm's num_batches_tracked
                merged[key] = torch.stack([u.weights[key] for u in updates]).max(dim=0).values
        return merged

    def server_gates(self) -> dict[str, list[float]]:
        return {"dma_max_weight": [max(weights) for weights in self.server.dma_weights]} if self.server.dma_weights else {}

    # --- client side ---------------------------------------------------------------------------

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {"pos_weight": positive_weights(client.observed, client.annotated), "step": 0}

    def before_training(self, ctx: LocalContext) -> None:
        if "teacher" not in ctx.state:  # the first local update: the teacher starts as the received model
            ctx.state["teacher"] = {k: v.detach().cpu().clone() for k, v in ctx.model.state_dict().items()}
        ctx.scratch.load_state_dict(ctx.state["teacher"])

    def after_training(self, ctx: LocalContext) -> None:
        ctx.state["teacher"] = {k: v.detach().cpu().clone() for k, v in ctx.scratch.state_dict().items()}

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        config = self.config
        view1, view2 = ctx.augment(batch.images), ctx.augment(batch.images)
        logits = ctx.model(view1).float()
        annotated = batch.annotated[None, :].expand_as(logits)
        weight = ctx.state["pos_weight"].to(logits.device) if config.pos_weight or self.official else None
        bce = F.binary_cross_entropy_with_logits(logits, batch.observed, pos_weight=weight, reduction="none")
        loss = masked_mean(bce, annotated)
        missing = ~annotated
        if config.lambda_u > 0 and bool(missing.any()):
            with torch.inference_mode():  # the teacher is a constant target
                target = torch.sigmoid(ctx.scratch(view2).float())
                if config.sharpen:
                    target = sharpen(target, config.sharpen_temperature)
            loss = loss + config.lambda_u * masked_mean((torch.sigmoid(logits) - target) ** 2, missing)
        return loss

    def after_step(self, ctx: LocalContext) -> None:
        alpha = ema_alpha(ctx.state["step"], self.config.ema_decay, warm_start=not self.official)
        ema_update_(*local_ema_pairs(ctx.memo, ctx.scratch, ctx.model, buffers=True), alpha)
        ctx.state["step"] += 1


@register("rscfed", display="RSCFed", section="rscfed", config=RSCFedConfig,
          summary="RSCFed: sub-consensus groups with distance-reweighted aggregation, per-client EMA teacher")
def _rscfed(settings: dict[str, Any]) -> Method:
    return RSCFed("rscfed", from_dict(RSCFedConfig, settings, "rscfed"))
