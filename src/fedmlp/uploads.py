"""The server's guard over what sites send: every upload is checked against the round's broadcast
before any server step sees it, and the aggregate is checked before it becomes the global model.

An upload is refused (:func:`check_upload`, one line naming the site, the round, the exchange and
what is wrong) when its weights do not have the broadcast's keys, shapes and dtypes, hold a NaN or
an infinity or a negative variance (BatchNorm's running variance: NaN in every prediction), or are far larger than the broadcast (``SIZE_FACTOR``); when its number of images is not
a positive integer at most the size the site declared (its partition's size in the simulation, its
``hello`` in a Flower run); when its aggregation weight is not finite, negative, or more than its
label entries allow (declared images × classes × local epochs); when its loss is not finite (a
training upload); or when its payload is not what the method declares for that exchange
(:attr:`fedmlp.methods.base.Method.payloads`, :class:`~fedmlp.methods.messages.Entry`).

A refused site is a failed site (:class:`Guard`, ``on_refused``): both round loops hand it to the
failure policy they share (:class:`fedmlp.failures.Roster`): the run stops, or with ``min-sites``
(``train.min_sites`` in the simulation) the site is dropped. Nothing non-finite reaches the global
model or a resume state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedmlp.config import AggregationConfig
from fedmlp.errors import FedmlpError
from fedmlp.failures import UploadRefused
from fedmlp.methods.messages import CENSUS, Broadcast, Entry, PayloadSchema, Upload, Weights

SIZE_FACTOR = 4  # an upload may be at most this many times the broadcast's bytes (weights and payload tensors)


def exchange_of(broadcast: Broadcast, training: bool) -> str:
    """The exchange a broadcast opens: ``train``, ``prepare`` or ``census``."""
    return "train" if training else CENSUS if broadcast.payload.get(CENSUS) is True else "prepare"


def nbytes(value: Any) -> int:
    """Bytes of every tensor in a weights dict or payload (nested)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return 0


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _nonfinite(tensor: torch.Tensor, nan_allowed: bool = False) -> int:
    """How many values are infinite, or NaN (unless allowed); 0 for non-floating tensors."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    bad = torch.isinf(tensor) if nan_allowed else ~torch.isfinite(tensor)
    return int(bad.sum())


def check_weights(weights: Any, reference: Weights, what: str = "weights", nonnegative: frozenset[str] = frozenset()) -> str | None:
    """Why ``weights`` is not a state dict like ``reference`` with finite values (and no negative
    value in the entries ``nonnegative``); None if it is."""
    if not isinstance(weights, dict):
        return f"{what} is a {type(weights).__name__}, not a state dict"
    missing, extra = [k for k in reference if k not in weights], [k for k in weights if k not in reference]
    if missing or extra:
        return f"{what} lack {missing[0]!r}" if missing else f"{what} hold {extra[0]!r}, which the model does not have"
    for key, ref in reference.items():
        value = weights[key]
        if not isinstance(value, torch.Tensor):
            return f"{what}[{key!r}] is a {type(value).__name__}, not a tensor"
        if value.dtype != ref.dtype:
            return f"{what}[{key!r}] is {str(value.dtype).removeprefix('torch.')}, the broadcast's {str(ref.dtype).removeprefix('torch.')}"
        if value.shape != ref.shape:
            return f"{what}[{key!r}] has shape {_shape(value.shape)}, the broadcast's {_shape(ref.shape)}"
        bad = _nonfinite(value)
        if bad:
            return f"{what}[{key!r}] has {bad} non-finite value(s) (NaN or inf)"
        if key in nonnegative and bool((value < 0).any()):
            return f"{what}[{key!r}] has {int((value < 0).sum())} negative value(s) (a variance)"
    return None


@dataclass(frozen=True)
class Limits:
    """What the server knows before any upload arrives: each site's declared number of images, and
    the dimensions payload schemas name."""

    declared: dict[int, int]  # client id → its training-set size (the partition's; a Flower site's hello)
    n_classes: int
    feature_dim: int
    local_epochs: int = 1
    nonnegative: frozenset[str] = frozenset()  # state-dict entries that are variances (BatchNorm's running_var): a negative one makes NaN


def check_entry(name: str, value: Any, entry: Entry, limits: Limits, n_images: int) -> str | None:
    where = f"payload[{name!r}]"
    if not isinstance(entry.kind, torch.dtype):
        return None if type(value) is entry.kind else f"{where} is a {type(value).__name__}, expected {entry.kind.__name__}"
    if not isinstance(value, torch.Tensor):
        return f"{where} is a {type(value).__name__}, not a tensor"
    dims = {"C": limits.n_classes, "D": limits.feature_dim}
    shape = tuple(dims[d] if isinstance(d, str) else d for d in entry.shape)
    if value.dtype != entry.kind:
        return f"{where} is {str(value.dtype).removeprefix('torch.')}, expected {str(entry.kind).removeprefix('torch.')}"
    if tuple(value.shape) != shape:
        return f"{where} has shape {_shape(value.shape)}, expected {_shape(shape)}"
    bad = _nonfinite(value, entry.nan)
    if bad:
        return f"{where} has {bad} {'infinite' if entry.nan else 'non-finite'} value(s)"
    if value.is_floating_point() and value.numel():
        present = value[~torch.isnan(value)]
        maximum = n_images if entry.maximum == "N" else entry.maximum
        if entry.minimum is not None and present.numel() and float(present.min()) < entry.minimum:
            return f"{where} has a value below {entry.minimum:g} ({float(present.min()):g})"
        if maximum is not None and present.numel() and float(present.max()) > maximum:
            return f"{where} has a value above {maximum:g} ({float(present.max()):g})"
    return None


def check_payload(payload: Any, schema: PayloadSchema, limits: Limits, n_images: int) -> str | None:
    if not isinstance(payload, dict):
        return f"payload is a {type(payload).__name__}, not a dict"
    extra = [k for k in payload if k not in schema]
    if extra:
        return f"payload[{extra[0]!r}] is not in the method's payload ({', '.join(map(repr, schema)) or 'none'})"
    present = [k for k in schema if k in payload]
    missing = [k for k, e in schema.items() if e.required and k not in payload]
    if missing:
        return f"payload lacks {missing[0]!r}"
    if present and len(present) != len(schema):  # optional entries come all together or not at all
        return f"payload has {present} of the method's {list(schema)}"
    for key in present:
        reason = check_entry(key, payload[key], schema[key], limits, n_images)
        if reason:
            return reason
    return None


def check_upload(upload: Upload, broadcast: Broadcast, exchange: str, schema: PayloadSchema, limits: Limits) -> str | None:
    """Why the server refuses ``upload`` (an answer to ``broadcast`` in ``exchange``); None if it does not."""
    declared = limits.declared.get(upload.client_id)
    if declared is None:
        return f"client {upload.client_id!r} is not a site of this federation"
    n = upload.n_samples
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= declared:
        return f"claims {n!r} images, expected a whole number from 1 to the {declared} it declared"
    if upload.weight is not None:
        weight, most = upload.weight, declared * limits.n_classes * limits.local_epochs
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or not 0 <= weight <= most:
            return f"claims aggregation weight {weight!r}, expected 0 to {most} (declared images × classes × local epochs)"
    if exchange == "train":
        if upload.weights is None:
            return "sent no weights"
        if not isinstance(upload.loss, (int, float)) or not math.isfinite(upload.loss):
            return f"reports loss {upload.loss!r}, not a finite number"
    elif upload.weights is not None:
        return f"sent weights in a {exchange} exchange"
    size, bound = nbytes(upload.weights) + nbytes(upload.payload), SIZE_FACTOR * (nbytes(broadcast.weights) + nbytes(broadcast.payload))
    if size > bound:
        return f"is {size} bytes, more than {SIZE_FACTOR} × the broadcast's {bound // SIZE_FACTOR}"
    if upload.weights is not None:
        reason = check_weights(upload.weights, broadcast.weights, nonnegative=limits.nonnegative)
        if reason:
            return reason
    return check_payload(upload.payload, schema, limits, n)


RefusalPolicy = Callable[[dict[int, str], int, str], None]  # (client id → reason, round number, exchange)


def stop_run(refused: dict[int, str], round_number: int, exchange: str) -> None:
    """The policy without ``min-sites``, for a guard used alone: no site may be refused."""
    client_id, reason = next(iter(refused.items()))
    raise UploadRefused(f"site {client_id} failed in round {round_number} ({exchange}): upload refused: {reason}")


@dataclass
class Guard:
    """The checks and the failure policy both round loops share (:func:`fedmlp.federated.server_round`)."""

    schemas: dict[str, PayloadSchema]
    limits: Limits
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    on_refused: RefusalPolicy = stop_run

    def screen(self, exchange: str, broadcast: Broadcast, uploads: list[Upload]) -> list[Upload]:
        """The uploads that pass; the refused sites go to the failure policy (all of a site's
        uploads go when one is refused)."""
        refused: dict[int, str] = {}
        schema = self.schemas.get(exchange, {})
        for upload in uploads:
            if upload.client_id not in refused:
                reason = check_upload(upload, broadcast, exchange, schema, self.limits)
                if reason is not None:
                    refused[upload.client_id] = reason
        if refused:
            self.on_refused(refused, broadcast.round + 1, exchange)
        return [u for u in uploads if u.client_id not in refused]


def check_aggregate(weights: Weights, broadcast: Broadcast, method: str, limits: Limits) -> None:
    """The server step's result must be a finite state dict like the broadcast (never saved otherwise)."""
    reason = check_weights(weights, broadcast.weights, "the aggregate", limits.nonnegative)
    if reason is not None:
        raise FedmlpError(f"round {broadcast.round + 1}: {method}'s server step gave a bad model: {reason}")
