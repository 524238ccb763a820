"""Surgical Aggregation (Kulkarni et al., ML4H 2024) for missing classes, as docs/baselines.md
§ Surgical Aggregation describes it.

Client: ``fedavg-masked``'s loss (BCE on its annotated classes, missing classes out of the loss); it
uploads which classes it annotates (``annotated``, C bools) with its weights, so the server learns
them from the method's messages only.

Server: FedAvg on everything below the classifier; each row of the classifier (the final linear
layer's weight row and bias entry of class c) is averaged over only the clients that annotate c,
renormalised among them; a class no client of the round annotates keeps the previous global row.
With every client annotating every class this is FedAvg exactly (``tests/test_surgical.py``).

No client or server state; no extra pass (the cost per step is ``fedavg-masked``'s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.errors import FedmlpError
from fedmlp.loader import Batch
from fedmlp.methods.base import LocalContext, Method, ServerContext, weighted_average
from fedmlp.methods.messages import Entry, Upload, Weights
from fedmlp.methods.registry import register
from fedmlp.models import Classifier
from fedmlp.schema import setting

ANNOTATED = "annotated"  # the upload payload's key: the client's annotated classes, (C,) bool


@dataclass(frozen=True)
class SurgicalConfig:
    """Surgical Aggregation (docs/baselines.md § Surgical Aggregation): classifier rows averaged over
    the clients that annotate their class."""

    weighted: bool = setting(
        True, "Weight each client by its number of images in every average (below the classifier and per class "
              "row), as our FedAvg; false: unweighted means, as the published code.")


def classifier_keys(model: Classifier) -> tuple[str, str]:
    """State-dict keys of the weight and bias of the model's final linear layer (its ``head``), found
    by module identity so that any backbone (compact CNN, ResNet-18) works."""
    name = next(n for n, module in model.named_modules() if module is model.head)
    return f"{name}.weight", f"{name}.bias"


def surgical_average(updates: list[Upload], previous: Weights, keys: tuple[str, str]) -> Weights:
    """FedAvg (:func:`weighted_average`) of every entry but ``keys``; row c of each ``keys`` entry is
    the average over the updates whose ``annotated`` payload has c, by their aggregation weights
    renormalised among them, or ``previous``'s row c if none has. Computed with the same operations
    as :func:`weighted_average`, so that with every class annotated everywhere the result is
    bit-identical to it."""
    merged = weighted_average(updates)
    annotated = torch.stack([u.payload[ANNOTATED].cpu().bool() for u in updates])  # (K, C)
    weights = [u.aggregation_weight for u in updates]
    # Python sums in update order, as weighted_average's total
    totals = [sum(w for w, has in zip(weights, column) if has) for column in annotated.T.tolist()]
    for key in keys:
        reference = updates[0].weights[key]
        if reference.shape[0] != annotated.shape[1]:
            raise FedmlpError(f"surgical: classifier entry {key!r} has {reference.shape[0]} rows, the uploads {annotated.shape[1]} classes")
        shape = (-1,) + (1,) * (reference.dim() - 1)  # one factor per row
        acc = torch.zeros_like(reference, dtype=torch.float64)
        for w, has, update in zip(weights, annotated.tolist(), updates):
            factor = torch.tensor([w / t if a else 0.0 for a, t in zip(has, totals)], dtype=torch.float64, device=acc.device)
            acc += update.weights[key].double() * factor.view(shape)
        nobody = torch.tensor([t == 0 for t in totals], device=acc.device).view(shape)
        merged[key] = torch.where(nobody, previous[key].to(acc.device, torch.float64), acc).to(reference.dtype)
    return merged


class Surgical(Method):
    payloads = {"train": {ANNOTATED: Entry(torch.bool, ("C",))}}

    def __init__(self, name: str, config: SurgicalConfig):
        self.name = name
        self.config = config

    # --- server side ---------------------------------------------------------------------------

    def aggregate(self, server: ServerContext, updates: list[Upload]) -> Weights:
        previous = {k: v.detach() for k, v in server.global_model.state_dict().items()}
        return surgical_average(updates, previous, classifier_keys(server.global_model))

    # --- client side ---------------------------------------------------------------------------

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        """``fedavg-masked``'s loss: BCE of the weak view on the annotated classes only."""
        logits = ctx.model(ctx.augment(batch.images)).float()
        bce = F.binary_cross_entropy_with_logits(logits, batch.observed, reduction="none")
        return bce[:, batch.annotated].mean()

    def upload_payload(self, ctx: LocalContext) -> dict[str, Any]:
        return {ANNOTATED: ctx.client.annotated.clone()}

    def aggregation_weight(self, ctx: LocalContext) -> float | None:
        return None if self.config.weighted else 1.0


@register("surgical", display="Surgical Aggregation", section="surgical", config=SurgicalConfig,
          summary="Surgical Aggregation: FedAvg below the classifier, each class row averaged over the clients that annotate it")
def _surgical(settings: dict[str, Any]) -> Method:
    return Surgical("surgical", from_dict(SurgicalConfig, settings, "surgical"))
