"""FedNoRo (Wu et al., IJCAI 2023) adapted to missing classes, as docs/baselines.md § FedNoRo describes it.

FedNoRo finds the clients with noisy labels and trains them with knowledge distillation from the
global model. Here a client's "noise" is known exactly: its missing classes, stored as 0. Every
client that misses a class is noisy on those classes, so the method is FedNoRo's stage-2 objective
for all of them:

    L = (1 − λ_t) · LA-BCE(annotated entries) + λ_t · KD(missing entries)

- LA-BCE: BCE on z + τ_LA · log(π / (1 − π)), π the client's observed positive rate per class
  (Laplace-smoothed, :func:`fedmlp.methods.fedmlp.class_prior`); predictions use the raw z;
- KD: soft-target BCE between σ(z) and σ(z_G / T), z_G from the frozen received global model on the
  same view;
- λ_t = a · exp(−5 (1 − clip((t − begin) / (end − begin), 0, 1))²), begin and end fractions of the run.

A client that annotates every class is clean: it trains LA-BCE alone. When some clients are clean
and some noisy, the server uses FedNoRo's distance-aware aggregation (DaAgg) from the ramp's begin
on: weights ∝ n_k · exp(−d_k / max d), d_k a noisy client's smallest weight distance to a clean
client (0 for clean ones). With no clean client (the setting of the FedMLP paper) it is FedAvg. The
stage-1 noisy-client detection (per-class losses and a Gaussian mixture) is not needed: which
clients are clean is known from their annotation.

``variant: official-code`` runs the published FedMLP code's version: no logit adjustment, BCE on
sigmoid probabilities, KD as the squared difference of sigmoid probabilities, every client weighted
(1 − λ_t) / λ_t, and always FedAvg.

Server gate (:meth:`~fedmlp.methods.base.Method.server_gates`): ``daagg_max_weight``, the largest client
share in the rounds where DaAgg acts (none logged where the server step is FedAvg).

Cost per image and step: one forward and one backward of the student and one no-grad forward of
the teacher, on one weak view.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.loader import Batch, ClientData
from fedmlp.methods.base import LocalContext, Method, ServerContext
from fedmlp.methods.common import class_prior, logit_offset, masked_mean, model_distance
from fedmlp.methods.messages import Entry, Upload, Weights
from fedmlp.methods.registry import register
from fedmlp.schema import setting


@dataclass(frozen=True)
class FedNoRoConfig:
    """FedNoRo (docs/baselines.md § FedNoRo): logit-adjusted BCE on annotated classes, distillation from
    the global model on missing classes with a ramped weight; DaAgg when some clients annotate every class."""

    kd_weight: float = setting(0.4, "a: the distillation weight λ_t at the end of its ramp (0.4 chosen on validation by config/tuning.yaml, docs/results/tuning; "
                                    "FedNoRo's own: 0.8).", minimum=0, maximum=1)
    ramp_begin: float = setting(
        0.02, "Round where the λ_t ramp starts, as a fraction of the run (the published code: 10 of 500).", minimum=0, maximum=1)
    ramp_end: float = setting(0.5, "Round where λ_t reaches a, as a fraction of the run (0.5 chosen on validation by config/tuning.yaml, docs/results/tuning; "
                                  "the published code: 499 of 500).",
                              minimum=0, maximum=1)
    temperature: float = setting(0.8, "T: the teacher's targets are σ(z_G / T).", exclusiveMinimum=0)
    logit_adjust: bool = setting(True, "Logit adjustment of the annotated-class BCE by the client's observed class prior.")
    la_tau: float = setting(1.0, "τ of the logit adjustment: z + τ · log(π / (1 − π)).", minimum=0)
    daagg: bool = setting(
        True, "Distance-aware aggregation from the ramp's begin when some clients annotate every class (else FedAvg).")
    variant: Literal["clean", "official-code"] = setting(
        "clean", "official-code: no logit adjustment, BCE on probabilities, squared-error KD, FedAvg.")

    ORDERED_KEYS = (("ramp_begin", "ramp_end"),)


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def ramp(round: int, total_rounds: int, a: float, begin: float, end: float) -> float:
    """λ_t = a · exp(−5 (1 − x)²), x = clip((t − b) / (e − b), 0, 1) with b = begin · T, e = end · T
    (round t counted from 0); a step at b when e ≤ b."""
    b, e = begin * total_rounds, end * total_rounds
    x = (1.0 if round >= b else 0.0) if e <= b else min(max((round - b) / (e - b), 0.0), 1.0)
    return a * math.exp(-5.0 * (1.0 - x) ** 2)


def supervised_term(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, offset: torch.Tensor | float,
                    on_probabilities: bool) -> torch.Tensor:
    """Mean BCE over the ``mask`` entries: on z + offset (logit adjustment), or on σ(z) (the published code)."""
    if on_probabilities:
        bce = F.binary_cross_entropy(torch.sigmoid(logits), targets, reduction="none")
    else:
        bce = F.binary_cross_entropy_with_logits(logits + offset, targets, reduction="none")
    return masked_mean(bce, mask)


def kd_term(logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float,
            form: Literal["bce", "mse"]) -> torch.Tensor:
    """Distillation to q = σ(z_G / T) over the ``mask`` entries: soft-target BCE(σ(z), q) or (σ(z) − q)²."""
    q = torch.sigmoid(teacher_logits / temperature)
    if form == "bce":
        values = F.binary_cross_entropy_with_logits(logits, q, reduction="none")
    else:
        values = (torch.sigmoid(logits) - q) ** 2
    return masked_mean(values, mask)


def daagg_weights(sizes: list[float], clean: list[bool], weights: list[Weights]) -> list[float]:
    """n_k · exp(−d_k / max d) normalised, d_k = a noisy client's smallest distance to a clean client
    (0 for clean clients). Without clean or without noisy clients: the sizes (FedAvg)."""
    total = sum(sizes)
    if all(clean) or not any(clean):
        return [n / total for n in sizes]
    distances = [0.0 if ok else min(model_distance(w, weights[j]) for j in range(len(weights)) if clean[j])
                 for ok, w in zip(clean, weights)]
    largest = max(distances)
    scaled = [n * math.exp(-(d / largest if largest > 0 else 0.0)) for n, d in zip(sizes, distances)]
    return [s / sum(scaled) for s in scaled]


# ---------------------------------------------------------------------------------------------


class FedNoRo(Method):
    payloads = {"train": {"complete": Entry(bool)}}  # whether the client annotates every class

    def __init__(self, name: str, config: FedNoRoConfig):
        self.name = name
        self.config = config
        self.daagg_shares: list[float] = []  # the last server step's DaAgg shares (empty: FedAvg); for the gate log only

    @property
    def official(self) -> bool:
        return self.config.variant == "official-code"

    @property
    def adjusts_logits(self) -> bool:
        return self.config.logit_adjust and not self.official

    def kd_lambda(self, round: int, total_rounds: int) -> float:
        c = self.config
        return ramp(round, total_rounds, c.kd_weight, c.ramp_begin, c.ramp_end)

    # --- server side ---------------------------------------------------------------------------

    def aggregate(self, server: ServerContext, updates: list[Upload]) -> Weights:
        begin = self.config.ramp_begin * server.total_rounds
        clean = [bool(u.payload.get("complete", False)) for u in updates]
        self.daagg_shares = []
        if self.official or not self.config.daagg or server.round < begin or all(clean) or not any(clean):
            return server.average(updates)
        shares = daagg_weights([u.aggregation_weight for u in updates], clean, [u.weights for u in updates])
        self.daagg_shares = shares
        return server.average([dataclasses.replace(u, weight=s) for u, s in zip(updates, shares)])

    def server_gates(self) -> dict[str, list[float]]:
        return {"daagg_max_weight": [max(self.daagg_shares)]} if self.daagg_shares else {}

    # --- client side ---------------------------------------------------------------------------

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {"offset": logit_offset(class_prior(client.observed, client.annotated))}

    def objective(self, logits: torch.Tensor, teacher_logits: torch.Tensor | None, observed: torch.Tensor,
                  annotated: torch.Tensor, offset: torch.Tensor, round: int, total_rounds: int) -> torch.Tensor:
        """The loss of a batch from the student's and the teacher's logits (teacher None: no missing class)."""
        c = self.config
        mask = annotated[None, :].expand_as(logits)
        adjust = c.la_tau * offset.to(logits.device) if self.adjusts_logits else 0.0
        sup = supervised_term(logits, observed, mask, adjust, on_probabilities=self.official)
        lam = self.kd_lambda(round, total_rounds)
        if teacher_logits is None:  # annotates every class: a clean client (official code: every client is noisy)
            return (1 - lam) * sup if self.official else sup
        kd = kd_term(logits, teacher_logits, ~mask, c.temperature, "mse" if self.official else "bce")
        return (1 - lam) * sup + lam * kd

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        images = ctx.augment(batch.images)
        logits = ctx.model(images).float()
        teacher = None
        if not bool(ctx.client.annotated.all()):
            with torch.inference_mode():  # the teacher is a constant target
                teacher = ctx.teacher(images).float()
            teacher = teacher.clone()  # an ordinary tensor, usable in autograd-recorded operations
        return self.objective(logits, teacher, batch.observed, batch.annotated, ctx.state["offset"], ctx.round, ctx.total_rounds)

    def upload_payload(self, ctx: LocalContext) -> dict[str, Any]:
        return {"complete": bool(ctx.client.annotated.all())}


@register("fednoro", display="FedNoRo", section="fednoro", config=FedNoRoConfig,
          summary="FedNoRo: logit-adjusted BCE on annotated classes, ramped distillation from the global model on missing ones")
def _fednoro(settings: dict) -> Method:
    return FedNoRo("fednoro", from_dict(FedNoRoConfig, settings, "fednoro"))
