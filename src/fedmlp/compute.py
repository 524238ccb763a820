"""Training compute, counted as a run trains: the images that pass through a model with gradients
(a training pass, forward and backward) and without (a teacher's target, a scoring or detection pass
over the client's images).

The loop's :class:`~fedmlp.federated.Site` hooks the backbone of every model a client's work runs in
(the trained model, the frozen teacher, the scratch model), so the counts follow from what a method
does, not from a figure typed in per method; the server's scoring of the global model on the test and
validation sets is evaluation, not training, and is not counted. A hook only adds to two integers:
it changes no random stream, no result, and no measurable time.

Per run the counts become images per training image (the images the clients hold) per round, and one
scalar cost in forward-equivalents: a forward+backward pass counts :data:`FORWARD_BACKWARD_COST` (the
backward pass costs about twice the forward), a forward-only pass 1. FedAvg with one view and one
local epoch costs 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedmlp.errors import FedmlpError

FORWARD_BACKWARD_COST = 3  # forward-equivalents of a forward+backward pass; a forward-only pass is 1
CONVENTION = "forward-equivalents per training image per round: a forward+backward pass counts 3, a forward-only pass 1"


@dataclass
class Passes:
    """Images through a model's backbone: with gradients (forward and backward) and without."""

    forward_backward: int = 0
    forward_only: int = 0

    def watch(self, *models: torch.nn.Module) -> None:
        """Count every later pass through these models' backbones (a forward pre-hook each)."""
        for model in models:
            model.backbone.register_forward_pre_hook(self._count)

    def _count(self, backbone: torch.nn.Module, args: tuple[Any, ...]) -> None:
        images = int(args[0].shape[0])
        if torch.is_grad_enabled() and next(backbone.parameters()).requires_grad:
            self.forward_backward += images
        else:
            self.forward_only += images

    def __add__(self, other: Passes) -> Passes:
        return Passes(self.forward_backward + other.forward_backward, self.forward_only + other.forward_only)


@dataclass(frozen=True)
class Compute:
    """A run's (or a stage's) counted passes, with what they are normalised by."""

    train_images: int  # the images the clients hold
    rounds: int  # the federated rounds trained (0 for a stage that only prepares a round)
    passes: Passes

    def per_image_round(self, count: int) -> float:
        return count / (self.train_images * self.rounds)

    def counts(self) -> dict[str, int]:
        """The raw counts (a stage's compute file: :meth:`from_json` reads it back)."""
        return {"train_images": self.train_images, "rounds": self.rounds,
                "forward_backward_images": self.passes.forward_backward, "forward_only_images": self.passes.forward_only}

    def to_json(self) -> dict[str, Any]:
        """metrics.json's ``compute``: the raw counts, and per training image per round the
        forward+backward and forward-only passes and the cost (:data:`CONVENTION`)."""
        fb, fo = self.passes.forward_backward, self.passes.forward_only
        return {
            **self.counts(),
            "forward_backward": self.per_image_round(fb),
            "forward_only": self.per_image_round(fo),
            "cost": self.per_image_round(FORWARD_BACKWARD_COST * fb + fo),
            "convention": CONVENTION,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Compute:
        """The counts of a stage's compute file (:meth:`to_json`), e.g. FedMLP's warm-up."""
        keys = ("train_images", "rounds", "forward_backward_images", "forward_only_images")
        if not isinstance(data, dict) or not all(isinstance(data.get(k), int) and not isinstance(data.get(k), bool) and data[k] >= 0
                                                 for k in keys):
            raise FedmlpError(f"{where}: not a compute file (expected non-negative integers {', '.join(keys)})")
        return cls(data["train_images"], data["rounds"], Passes(data["forward_backward_images"], data["forward_only_images"]))

    def __add__(self, other: Compute) -> Compute:
        """Two stages of one run (the same clients): their rounds and passes summed."""
        if other.train_images != self.train_images:
            raise FedmlpError(f"compute of stages over {self.train_images} and {other.train_images} training images: not one run")
        return Compute(self.train_images, self.rounds + other.rounds, self.passes + other.passes)
