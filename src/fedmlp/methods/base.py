"""The interface every federated method implements (FLamby/Flower-style strategies).

The loop in :mod:`fedmlp.federated` is generic: each round it hands every client a
:class:`LocalContext` and asks the method for a :class:`ClientUpdate`, then asks the method to
aggregate. A method owns its loss, its per-client state (kept across rounds), any payload it uploads
beside the weights, and its server step. The default local update is one optimiser over
``train.local_epochs`` shuffled epochs, calling :meth:`Method.loss` per batch; the default server step
is FedAvg weighted by client size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from fedmlp.augment import random_affine
from fedmlp.config import TrainConfig
from fedmlp.loader import Batch, ClientData, batches
from fedmlp.models import Classifier
from fedmlp.runtime import Runtime
from fedmlp.store import ImageStore


@dataclass
class ClientUpdate:
    weights: dict[str, torch.Tensor]
    n_samples: int
    loss: float
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class LocalContext:
    """Everything one client's local update may use. Nothing here holds hidden labels."""

    round: int
    client: ClientData
    model: Classifier  # starts as the received global model; trained in place
    teacher: Classifier  # frozen copy of the received global model (eval mode)
    state: dict[str, Any]  # this client's state, kept across rounds
    store: ImageStore
    runtime: Runtime
    train: TrainConfig
    generator: torch.Generator  # this client's and round's random stream
    on_batch: Callable[[], None] = lambda: None

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        return random_affine(images, self.train.augment, self.generator)

    def batches(self):
        return batches(self.store, self.client, self.train.batch_size, self.generator, self.runtime.device)


@dataclass
class RoundContext:
    """What a method's server-side round hook may use (all clients at once, as a simulation can)."""

    round: int
    global_model: Classifier
    clients: list[ClientData]
    states: list[dict[str, Any]]
    store: ImageStore
    runtime: Runtime
    train: TrainConfig


class Method(ABC):
    """Base class: override :meth:`loss`; override the others when the method needs to."""

    name: str = ""
    # "partial": clients see only their annotated classes; "full": every class (an upper bound).
    label_access: ClassVar[Literal["partial", "full"]] = "partial"

    def n_rounds(self, train: TrainConfig) -> int:
        """Total rounds of a complete run (methods with their own schedule override this)."""
        return train.rounds

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {}

    def begin_round(self, ctx: RoundContext) -> None:
        """Called once per round before local training, e.g. to refresh server-side payloads."""

    def state_dict(self) -> dict[str, Any]:
        """Server-side state kept across rounds (saved for resuming); tensors and plain values only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    @abstractmethod
    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        """Scalar training loss for one batch (called under autocast)."""

    def local_update(self, ctx: LocalContext) -> ClientUpdate:
        model = ctx.model
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=ctx.train.lr, weight_decay=ctx.train.weight_decay)
        total, seen = 0.0, 0
        for _ in range(ctx.train.local_epochs):
            for batch in ctx.batches():
                with ctx.runtime.autocast():
                    loss = self.loss(ctx, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch.positions)
                seen += len(batch.positions)
                ctx.on_batch()
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return ClientUpdate(weights=weights, n_samples=len(ctx.client), loss=total / max(seen, 1))

    def aggregate(self, updates: list[ClientUpdate], round: int) -> dict[str, torch.Tensor]:
        return weighted_average(updates)


def weighted_average(updates: list[ClientUpdate]) -> dict[str, torch.Tensor]:
    """Average of the clients' weights, weighted by their number of images (in a fixed order)."""
    total = sum(u.n_samples for u in updates)
    averaged = {}
    for key, reference in updates[0].weights.items():
        if reference.is_floating_point():
            acc = torch.zeros_like(reference, dtype=torch.float64)
            for update in updates:
                acc += update.weights[key].double() * (update.n_samples / total)
            averaged[key] = acc.to(reference.dtype)
        else:  # integer buffers such as BatchNorm's num_batches_tracked
            averaged[key] = torch.stack([u.weights[key] for u in updates]).max(dim=0).values
    return averaged
