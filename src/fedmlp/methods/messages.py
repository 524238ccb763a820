"""What travels between the server and the clients: the only coupling between the two sides.

A round is one to three exchanges. The server sends a :class:`Broadcast` (the global weights and a
method payload); each client answers with an :class:`Upload`. An optional *prepare* exchange comes
first (FedMLP: clients upload prototypes and learning degrees computed with the received model, and
the server's aggregate rides on the training broadcast), and before it an optional *census* (a
prepare exchange whose payload is ``{CENSUS: True}``: clients report statistics of their own labels,
no model pass; FedMLP with ``degree_scale: prior``, once). Payloads hold tensors and plain values only,
so a message can be saved with ``torch.save(weights_only=True)`` or sent over a network unchanged.

Each method declares what its uploads' payloads hold (:class:`Entry`, per exchange:
:attr:`fedmlp.methods.base.Method.payloads`), so that the server can refuse anything else before it
reaches a server step (:mod:`fedmlp.uploads`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

Weights = dict[str, torch.Tensor]

# A census request (:meth:`fedmlp.methods.base.Method.census`): a prepare broadcast whose payload is
# {CENSUS: True} asks each client for :meth:`~fedmlp.methods.base.Method.client_census`.
CENSUS = "census"


# The exchanges of a round, as named in payload schemas and refusals.
EXCHANGES = (CENSUS, "prepare", "train")


@dataclass(frozen=True)
class Entry:
    """One entry of an upload's payload as a method declares it: a tensor of ``kind`` (a torch dtype)
    and ``shape``, or a plain value of ``kind`` (a Python type, shape ``()``). Shape dimensions are
    numbers or names: ``C`` the number of classes, ``D`` the model's feature dimension. ``maximum``
    ``"N"`` bounds the values by the site's declared number of images (counts of its images)."""

    kind: torch.dtype | type
    shape: tuple[int | str, ...] = ()
    required: bool = True
    nan: bool = False  # NaN is allowed (it means "undefined" there); ±inf never is
    minimum: float | None = None
    maximum: float | str | None = None


PayloadSchema = dict[str, Entry]


@dataclass
class Broadcast:
    round: int
    weights: Weights  # the global model's state dict
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Upload:
    """A client's answer. ``weights`` is None in a prepare exchange. ``weight`` is the client's
    weight in the server's average (its number of images unless the method says otherwise)."""

    client_id: int
    n_samples: int
    weights: Weights | None = None
    loss: float = float("nan")
    weight: float | None = None
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def aggregation_weight(self) -> float:
        return float(self.n_samples if self.weight is None else self.weight)
