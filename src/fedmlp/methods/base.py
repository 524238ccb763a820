"""The interface every federated method implements, in two halves that share nothing but messages.

Server side (sees only :class:`ServerContext` and the clients' :class:`~fedmlp.methods.messages.Upload`):
which clients train this round (:meth:`Method.select_clients`, repeats allowed), what rides on the
broadcast besides the weights (:meth:`Method.broadcast_payload`), an optional census before the
broadcast (:meth:`Method.census`, :meth:`Method.server_census`), an optional prepare exchange
(:meth:`Method.prepares`, :meth:`Method.server_prepare`), and the server step
(:meth:`Method.aggregate`). Each of these sees the round's :class:`ServerContext`, which also says
which sites the round asked to train (``selected``), whose training uploads were accepted
(``answered``, filled before :meth:`Method.aggregate`) and which sites failed or were refused in
any exchange of the round so far, and why (``failures``, :class:`Failure`): a failed site's upload
is simply absent from the list a step receives, so a method that must tell "site 3 failed" from
"site 3 was not asked" reads these (as Flower's strategies receive their failures). No method of
ours changes its behaviour on them. Server-side state lives in ``self.server`` (a dataclass of tensors and
plain values) and is saved for resuming by the loop, not by each method.

Client side (sees only :class:`LocalContext`: its own data, its own state, the broadcast): the
census and prepare answers (:meth:`Method.client_census`, :meth:`Method.client_prepare`), a hook before training (:meth:`Method.before_training`),
the loss per batch (:meth:`Method.loss`), hooks after every optimiser step (:meth:`Method.after_step`)
and after training (:meth:`Method.after_training`), the upload's payload and aggregation weight. The default local update is one Adam optimiser (created
anew each round, as in the published code) over ``train.local_epochs`` shuffled epochs.

The loop (:mod:`fedmlp.federated`) and the Flower app run both halves through these calls only.

Gates: a method whose terms act only where a test passes (a confidence mask, a threshold) reports
how often it passed, from values it computes anyway: a client's side by :func:`record_gate` into
its state, the server's by :meth:`Method.server_gates`. The loop collects both after every round
(:func:`fedmlp.federated.gate_rows`); nothing in training reads them.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from fedmlp.augment import augment
from fedmlp.config import TrainConfig
from fedmlp.failures import Failure
from fedmlp.loader import Batch, ClientData, batches
from fedmlp.methods.messages import Broadcast, PayloadSchema, Upload, Weights
from fedmlp.models import Classifier
from fedmlp.optim import adam
from fedmlp.runtime import Runtime
from fedmlp.store import ImageView

# Client-state key of this round's gate rates, {gate name: share in [0, 1]}: set by the method during a
# local update, taken out (and so cleared) by the loop after the round.
GATES = "gates"


def record_gate(state: dict[str, Any], gate: str, rate: float) -> None:
    """Record one gate's rate of this local update in the client's state (see the module docstring)."""
    state.setdefault(GATES, {})[gate] = float(rate)


@dataclass
class LocalContext:
    """Everything one client's local work may use. Nothing here holds hidden labels (nor validation or
    test labels): ``store`` is the store's label-free :class:`~fedmlp.store.ImageView` and the
    client's labels are ``client.observed`` (0 on missing classes). The one exception is
    ``hidden_labels``, set only for a diagnostic that declares it reads them
    (:meth:`Method.reads_hidden_labels`)."""

    round: int
    total_rounds: int
    client: ClientData
    model: Classifier  # holds the received global weights; trained in place
    teacher: Classifier  # frozen copy of the received global model (eval mode)
    scratch: Classifier  # a spare model (eval mode, no gradients), e.g. for a per-client EMA teacher
    state: dict[str, Any]  # this client's state, kept across rounds (tensors and plain values)
    store: ImageView  # images, image IDs and class names: no labels
    runtime: Runtime
    train: TrainConfig
    generator: torch.Generator  # this client's and round's random stream
    payload: dict[str, Any] = field(default_factory=dict)  # what the server broadcast beside the weights
    on_batch: Callable[[], None] = lambda: None
    memo: dict[Any, Any] = field(default_factory=dict)  # this local update's scratch values (never saved; not client state)
    hidden_labels: torch.Tensor | None = None  # (N, C) int8 true labels of the client's images: None unless reads_hidden_labels()

    def augment(self, images: torch.Tensor, policy: str = "weak") -> torch.Tensor:
        """A uint8 batch augmented by a named policy (``none``, ``weak``, ``strong``): float in [0, 1]."""
        return augment(images, policy, self.train.augment, self.generator)

    def batches(self):
        return batches(self.store, self.client, self.train.batch_size, self.generator, self.runtime.device)


@dataclass
class ServerContext:
    """What the server step may use: never a client's data or state."""

    round: int
    total_rounds: int
    global_model: Classifier  # the global model before this round's update (read only)
    client_ids: list[int]  # the sites still in the run (a site dropped by the failure policy is gone from then on)
    generator: torch.Generator  # the server's random stream for this round
    runtime: Runtime
    combine: Callable[[list[Upload]], Weights] | None = None  # the federation's average (train.aggregation); None: weighted_average
    selected: list[int] = field(default_factory=list)  # this round's training tasks (select_clients), in order, repeats kept
    answered: list[int] = field(default_factory=list)  # the clients whose training uploads were accepted (sorted, once each)
    failures: list[Failure] = field(default_factory=list)  # this round's failed or refused sites so far, in every exchange
    averaged: bool = field(default=False, init=False)  # whether the server step used :meth:`average` (robust rules need it)

    def average(self, updates: list[Upload]) -> Weights:
        """The clients' weights averaged by the federation's rule: FedAvg's weighted mean by default,
        a robust rule (:mod:`fedmlp.robust`) if ``train.aggregation`` says so. A server step that
        averages models calls this rather than :func:`weighted_average`."""
        self.averaged = True
        return (self.combine or weighted_average)(updates)


class Method(ABC):
    """Base class: override :meth:`loss`; override the others when the method needs to."""

    name: str = ""
    # "partial": clients see only their annotated classes; "full": every class (an upper bound).
    label_access: ClassVar[Literal["partial", "full"]] = "partial"
    server: Any = None  # server-side state: a dataclass instance, saved and restored by the loop
    # What each exchange's uploads carry beside the weights (census, prepare, train): the server
    # refuses an upload whose payload differs (:mod:`fedmlp.uploads`). Nothing, unless declared.
    payloads: ClassVar[dict[str, PayloadSchema]] = {}

    def n_rounds(self, train: TrainConfig) -> int:
        """Total rounds of a complete run."""
        return train.rounds

    def warnings(self) -> list[str]:
        """Caveats that make a run's results something other than the method's (a diagnostic that
        reads hidden labels, say); the training commands write them into metrics.json (``warnings``)."""
        return []

    def reads_hidden_labels(self) -> bool:
        """Whether this client side is given its clients' true labels of every class
        (:attr:`LocalContext.hidden_labels`): only a diagnostic that is not a method may ask, and its
        :meth:`warnings` must say so (FedMLP's ``oracle_pseudolabels``)."""
        return False

    # --- server side -------------------------------------------------------------------------

    def select_clients(self, server: ServerContext) -> list[int]:
        """Clients that train this round, in order; a client may appear more than once."""
        return list(server.client_ids)

    def broadcast_payload(self, server: ServerContext) -> dict[str, Any]:
        return {}

    def census(self, round: int) -> bool:
        """Whether this round opens with a census, before its broadcast is built: each client answers
        :meth:`client_census` (statistics of its own labels, no model pass) and the server keeps the
        combination in its state (:meth:`server_census`), so that the round's broadcasts (its prepare
        exchange's included) can carry it. It travels as a prepare exchange whose broadcast payload is
        ``{CENSUS: True}`` (:data:`fedmlp.methods.messages.CENSUS`)."""
        return False

    def server_census(self, server: ServerContext, uploads: list[Upload]) -> None:
        """Combine the census answers into the server's state."""

    def prepares(self, round: int) -> bool:
        """Whether this round starts with a prepare exchange (clients answer :meth:`client_prepare`)."""
        return False

    def server_prepare(self, server: ServerContext, uploads: list[Upload]) -> dict[str, Any]:
        """Combine the prepare answers into payload for the training broadcast."""
        return {}

    def aggregate(self, server: ServerContext, updates: list[Upload]) -> Weights:
        return server.average(updates)

    def server_gates(self) -> dict[str, list[float]]:
        """The last server step's gate rates: per gate, one value in [0, 1] per unit it applies to (a
        group, say), in a fixed order; {} when the server step has no gate (or it did not act)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.server) if self.server is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.server is not None:
            self.server = type(self.server)(**state)

    # --- client side -------------------------------------------------------------------------

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {}

    def client_census(self, ctx: LocalContext) -> dict[str, Any]:
        raise NotImplementedError(f"{self.name} has no census")

    def client_prepare(self, ctx: LocalContext) -> dict[str, Any]:
        raise NotImplementedError(f"{self.name} has no prepare exchange")

    def before_training(self, ctx: LocalContext) -> None:
        """Called at the start of a local update, after the broadcast is received."""

    @abstractmethod
    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        """Scalar training loss for one batch (called under autocast)."""

    def after_step(self, ctx: LocalContext) -> None:
        """Called after every optimiser step (EMA teachers)."""

    def after_training(self, ctx: LocalContext) -> None:
        """Called at the end of a local update, before the upload is built (e.g. to store an EMA
        teacher back into the client's state)."""

    def upload_payload(self, ctx: LocalContext) -> dict[str, Any]:
        return {}

    def aggregation_weight(self, ctx: LocalContext) -> float | None:
        """The client's weight in the server's average; None: its number of images."""
        return None

    def local_update(self, ctx: LocalContext) -> Upload:
        self.before_training(ctx)
        model = ctx.model
        model.train()
        # fused: one kernel for all parameters, a third of the for-loop version's time per step on CPU;
        # torch.optim.Adam(fused=True)'s kernel without its import of torch._dynamo (fedmlp.optim)
        optimizer = adam(model.parameters(), lr=ctx.train.lr, weight_decay=ctx.train.weight_decay)
        total, seen = 0.0, 0
        for _ in range(ctx.train.local_epochs):
            for batch in ctx.batches():
                with ctx.runtime.autocast():
                    loss = self.loss(ctx, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                self.after_step(ctx)
                total += float(loss.detach()) * len(batch.positions)
                seen += len(batch.positions)
                ctx.on_batch()
        self.after_training(ctx)
        return Upload(
            client_id=ctx.client.client_id,
            n_samples=len(ctx.client),
            weights={k: v.detach().clone() for k, v in model.state_dict().items()},
            loss=total / max(seen, 1),
            weight=self.aggregation_weight(ctx),
            payload=self.upload_payload(ctx),
        )


class StagedMethod(Method):
    """A method the workflow trains in three stages with their own artifacts (warmup → pseudolabel →
    teacher), so that a change of a later stage's settings reuses the warm-up."""

    @property
    @abstractmethod
    def first_stage2_round(self) -> int: ...

    @abstractmethod
    def export(self, clients: list[ClientData], states: list[dict[str, Any]], store: ImageView) -> dict[str, Any]:
        """The state after the first detection, as JSON (the pseudolabel stage's artifact)."""

    @abstractmethod
    def preload(self, artifact: dict[str, Any]) -> None:
        """Use an exported detection for the first stage-2 round instead of recomputing it."""


def weighted_average(updates: list[Upload]) -> Weights:
    """Average of the clients' weights, weighted by their aggregation weight (in a fixed order)."""
    total = sum(u.aggregation_weight for u in updates)
    averaged = {}
    for key, reference in updates[0].weights.items():
        if reference.is_floating_point():
            acc = torch.zeros_like(reference, dtype=torch.float64)
            for update in updates:
                acc += update.weights[key].double() * (update.aggregation_weight / total)
            averaged[key] = acc.to(reference.dtype)
        else:  # integer buffers such as BatchNorm's num_batches_tracked
            averaged[key] = torch.stack([u.weights[key] for u in updates]).max(dim=0).values
    return averaged


def broadcast_of(round: int, model: Classifier, payload: dict[str, Any] | None = None) -> Broadcast:
    return Broadcast(round, {k: v.detach().clone() for k, v in model.state_dict().items()}, payload or {})
