"""FedAvg reference points: what a method for missing classes must beat, and its ceiling.

- ``fedavg-full``: every client sees every class (upper bound; not a realistic setting);
- ``fedavg-partial``: missing classes stored as 0 and trained as negatives (the naive approach);
- ``fedavg-masked``: missing classes left out of the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fedmlp.loader import Batch
from fedmlp.methods.base import LocalContext, Method
from fedmlp.methods.registry import register


class FedAvg(Method):
    def __init__(self, name: str, mask_missing: bool):
        self.name = name
        self.mask_missing = mask_missing

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        logits = ctx.model(ctx.augment(batch.images)).float()
        bce = F.binary_cross_entropy_with_logits(logits, batch.observed, reduction="none")
        if self.mask_missing:
            return bce[:, batch.annotated].mean()
        return bce.mean()


class FedAvgFull(FedAvg):
    label_access = "full"


@register("fedavg-full", display="FedAvg (full labels)", summary="FedAvg, every client sees every class (upper bound)")
def _full(settings: dict) -> Method:
    return FedAvgFull("fedavg-full", mask_missing=False)


@register("fedavg-partial", display="FedAvg (missing as 0)", summary="FedAvg, missing classes trained as negatives")
def _partial(settings: dict) -> Method:
    return FedAvg("fedavg-partial", mask_missing=False)


@register("fedavg-masked", display="FedAvg (masked)", summary="FedAvg, missing classes left out of the loss")
def _masked(settings: dict) -> Method:
    return FedAvg("fedavg-masked", mask_missing=True)
