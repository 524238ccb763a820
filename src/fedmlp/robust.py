"""Robust aggregation (``train.aggregation``): averages that one hostile client cannot steer alone.

``median`` and ``trimmed-mean`` replace the weighted mean of a method's server step (the server
calls :meth:`fedmlp.methods.base.ServerContext.average`) by a coordinate-wise median, or a mean after
dropping the ``trim_fraction`` largest and smallest values of every coordinate. Both ignore the
clients' aggregation weights: a weight is the client's own claim, which is what a hostile client
would inflate. ``clip_norm`` scales each update (the client's model minus the broadcast) down to an
L2 norm over all floating tensors, before any rule. Integer buffers (BatchNorm's
``num_batches_tracked``) take the maximum, as in :func:`fedmlp.methods.base.weighted_average`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch

from fedmlp.config import AggregationConfig
from fedmlp.errors import FedmlpError
from fedmlp.methods.messages import Upload, Weights


def clip_updates(updates: list[Upload], reference: Weights, max_norm: float) -> list[Upload]:
    """Each upload whose update's L2 norm exceeds ``max_norm`` with its update scaled down to it."""
    out = []
    floating = [k for k, v in reference.items() if v.is_floating_point()]
    for upload in updates:
        norm = math.sqrt(sum(float((upload.weights[k].double() - reference[k].double()).pow(2).sum()) for k in floating))
        if norm <= max_norm:
            out.append(upload)
            continue
        scale = max_norm / norm
        weights = dict(upload.weights)
        for k in floating:
            weights[k] = (reference[k].double() + (upload.weights[k].double() - reference[k].double()) * scale).to(reference[k].dtype)
        out.append(dataclasses.replace(upload, weights=weights))
    return out


def _coordinatewise(updates: list[Upload], combine: Callable[[torch.Tensor], torch.Tensor]) -> Weights:
    out = {}
    for key, reference in updates[0].weights.items():
        stacked = torch.stack([u.weights[key] for u in updates])
        if reference.is_floating_point():
            out[key] = combine(stacked.double()).to(reference.dtype)
        else:
            out[key] = stacked.max(dim=0).values
    return out


def median(updates: list[Upload]) -> Weights:
    """Coordinate-wise median (the mean of the two middle values for an even number of clients)."""
    def combine(stacked: torch.Tensor) -> torch.Tensor:
        ordered = stacked.sort(dim=0).values
        k = len(stacked)
        return (ordered[(k - 1) // 2] + ordered[k // 2]) / 2
    return _coordinatewise(updates, combine)


def trimmed_mean(updates: list[Upload], fraction: float) -> Weights:
    """Coordinate-wise mean after dropping ``floor(fraction * K)`` values at each end (K clients)."""
    def combine(stacked: torch.Tensor) -> torch.Tensor:
        cut = int(fraction * len(stacked))
        return stacked.sort(dim=0).values[cut:len(stacked) - cut].mean(dim=0)
    return _coordinatewise(updates, combine)


def combiner(config: AggregationConfig) -> Callable[[list[Upload]], Weights] | None:
    """The average that replaces the weighted mean; None for ``mean`` (the method's own)."""
    if config.rule == "median":
        return median
    if config.rule == "trimmed-mean":
        return lambda updates: trimmed_mean(updates, config.trim_fraction)
    if config.rule != "mean":
        raise FedmlpError(f"config key 'train.aggregation.rule': {config.rule!r} is not one of mean, median, trimmed-mean")
    return None
