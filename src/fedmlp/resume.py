"""Resumable training: the state of a run after a completed round, written atomically.

Random streams are derived per (client, round) from the seed and the optimiser is created anew each
round, so the state of a run between rounds is just: the global weights, each client's state, the
method's server state, and what was recorded so far. A run killed at any point and started again
continues after the last saved round and ends with the same weights as an uninterrupted run.

The file lives outside the rule's declared outputs (``resume/`` by default), so Snakemake's handling
of incomplete outputs never removes it; it is deleted once the stage's outputs are written. The file
is recognisably ours (:data:`FORMAT`): a path naming any other file stops the run before it starts,
and a state of this run that cannot be continued (other shapes, NaN, a round outside the stage) is
renamed to ``<file>.bad`` with a warning, never deleted.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmlp.atomic import atomic_path
from fedmlp.errors import FedmlpError, one_line

log = logging.getLogger(__name__)


def fingerprint(*parts: object, files: tuple[Path, ...] = ()) -> str:
    """What a run depends on: settings (JSON-able) and the contents of its input files."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in files:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


FORMAT = "fedmlp-resume-state/1"  # what makes a file recognisably ours: only such a file is ever replaced or removed


class BadResumeState(ValueError):
    """A resume state of this run that cannot be continued (the message says why)."""


def _is_ours(payload: object) -> bool:
    """Saved by this module: the format field, or (states of before it) a run key and a round."""
    return isinstance(payload, dict) and (payload.get("format") == FORMAT
                                          or (isinstance(payload.get("key"), str) and "round" in payload and "format" not in payload))


def _non_finite(weights: object) -> str | None:
    """The name of the first floating-point weight with a NaN or infinite value, if any."""
    if not isinstance(weights, dict):
        return None
    return next((name for name, w in weights.items()
                 if isinstance(w, torch.Tensor) and w.is_floating_point() and not torch.isfinite(w).all()), None)


def check_state(payload: dict[str, Any], model_state: dict[str, torch.Tensor], rounds: range) -> None:
    """Raise :class:`BadResumeState` unless ``payload`` can continue a run of ``rounds`` with a model of
    ``model_state``'s shapes: every field there, the saved round inside the stage and matching the
    history, every tensor finite. (The sites' part is checked by :func:`check_clients` in the
    simulation, :func:`check_versions` in a Flower run, and :func:`check_roster`.)"""
    for name, kind in {"round": int, "global": dict, "method": dict, "history": list}.items():
        if not isinstance(payload.get(name), kind) or (kind is int and isinstance(payload[name], bool)):
            raise BadResumeState(f"field {name!r} missing or not a {kind.__name__}")
    saved = payload["round"]
    if not rounds.start <= saved < rounds.stop:
        raise BadResumeState(f"saved after round {saved}, outside this stage's rounds {rounds.start} to {rounds.stop - 1}")
    if len(payload["history"]) != saved - rounds.start:
        raise BadResumeState(f"{len(payload['history'])} recorded rounds for a state saved after round {saved}")
    for record in payload["history"]:
        if not isinstance(record, dict) or not isinstance(record.get("round"), int):
            raise BadResumeState("a recorded round without its number")
    weights = payload["global"]
    if set(weights) != set(model_state):
        raise BadResumeState("its model weights are not this run's model's (other parameter names)")
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != model_state[name].shape:
            raise BadResumeState(f"model weight {name}: not a tensor of shape {tuple(model_state[name].shape)}")
    broken = _non_finite(weights)
    if broken is not None:  # the clients' and the method's states may hold NaN on purpose ("not measured yet")
        raise BadResumeState(f"model weight {broken} holds NaN or infinite values")


def check_clients(payload: dict[str, Any], n_clients: int) -> None:
    """The simulation's part: one client state per client of the partition."""
    if not isinstance(payload.get("clients"), list):
        raise BadResumeState("field 'clients' missing or not a list")
    if len(payload["clients"]) != n_clients:
        raise BadResumeState(f"{len(payload['clients'])} client states, the partition has {n_clients} clients")


def check_versions(payload: dict[str, Any]) -> None:
    """A Flower coordinator's part (``fedmlp federate``): its sites' ids, state versions and drops."""
    for name, kind in (("client_ids", list), ("dropped", list), ("versions", dict)):
        if not isinstance(payload.get(name), kind):
            raise BadResumeState(f"field {name!r} missing or not a {kind.__name__}")


def check_roster(payload: dict[str, Any], sites: list[int]) -> list[int]:
    """The sites still in the run as saved (``client_ids``, with the ``dropped`` list beside it; a
    state of before the failure policy has neither: every site of ``sites``)."""
    if "client_ids" not in payload and "dropped" not in payload:
        return list(sites)
    saved, dropped = payload.get("client_ids"), payload.get("dropped")
    if not isinstance(saved, list) or not isinstance(dropped, list):
        raise BadResumeState("field 'client_ids' or 'dropped' missing or not a list")
    if not set(saved) <= set(sites):
        raise BadResumeState(f"saved with sites {saved}, not all of this run's {sites}")
    return list(saved)


@dataclass(frozen=True)
class ResumePoint:
    """The file a run saves its state to between rounds. Only a file of ours is ever replaced or
    removed: anything else at the path stops the run (one line) before it starts."""

    path: Path
    key: str  # fingerprint of the run; a state saved by a different run is ignored
    every: int = 1

    def _read(self) -> dict[str, Any] | None:
        """The payload at the path (None without a file); FedmlpError for a file that is not ours."""
        if not self.path.exists() and not self.path.is_symlink():
            return None
        foreign = f"{self.path}: exists and is not a fedmlp resume state; refusing to overwrite or remove it (name another file)"
        if not self.path.is_file():
            raise FedmlpError(foreign)
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # not a torch file, or one with pickled code in it
            raise FedmlpError(foreign) from None
        if not _is_ours(payload):
            raise FedmlpError(foreign)
        return payload

    def load(self, restore: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any] | None:
        """The saved state of this run, after ``restore`` (which checks it and applies it, all or
        nothing, raising :class:`BadResumeState`, KeyError or TypeError for a state it cannot use)
        accepted it; None to start afresh. A bad state of this run is set aside as ``<file>.bad``."""
        payload = self._read()
        if payload is None:
            return None
        if payload.get("key") != self.key:
            log.warning("ignoring resume state %s: it belongs to a run with other settings or inputs", self.path)
            return None
        if restore is not None:
            try:
                restore(payload)
            except (BadResumeState, KeyError, TypeError, ValueError) as exc:
                bad = self.path.with_name(self.path.name + ".bad")
                self.path.replace(bad)
                log.warning("resume state %s cannot be continued (%s); set aside as %s, starting afresh", self.path, one_line(exc), bad)
                return None
        log.info("resuming from %s after round %d", self.path, payload["round"])
        return payload

    def due(self, round_number: int, last: bool) -> bool:
        return not last and round_number % self.every == 0

    def save(self, payload: dict[str, Any]) -> None:
        """Save the state after ``payload["round"]``; a model with NaN or infinite weights is refused, not saved."""
        broken = _non_finite(payload.get("global"))
        if broken is not None:
            raise FedmlpError(f"round {payload['round']}: the global model's weights hold NaN or infinite values ({broken}); "
                              f"not saved into the resume state {self.path} (the training diverged: lower the learning rate)")
        with atomic_path(self.path, now=True) as tmp, open(tmp, "wb") as handle:  # now: it must outlive a failed run
            torch.save({**payload, "format": FORMAT, "key": self.key}, handle)

    def clear(self) -> None:
        """Remove the saved state once the run's outputs are written (only a file of ours); inside
        :func:`cleared_together`, once every run of the block has written its outputs."""
        kept = _KEPT.get()
        if kept is not None:
            kept.append(self)
        elif self._read() is not None:
            self.path.unlink()


_KEPT: contextvars.ContextVar[list[ResumePoint] | None] = contextvars.ContextVar("fedmlp_kept_resume_states", default=None)


@contextlib.contextmanager
def cleared_together() -> Iterator[None]:
    """Runs that finish inside this block keep their resume states until it ends without an error:
    when several runs make one Snakemake job (``fedmlp pack``), a failure removes every output of
    the job, and the rerun then continues the finished runs from their last saved round."""
    kept: list[ResumePoint] = []
    token = _KEPT.set(kept)
    try:
        yield
    finally:
        _KEPT.reset(token)
    for resume in kept:
        resume.clear()
