"""Resumable training: the state of a run after a completed round, written atomically.

Random streams are derived per (client, round) from the seed and the optimiser is created anew each
round, so the state of a run between rounds is just: the global weights, each client's state, the
method's server state, and what was recorded so far. A run killed at any point and started again
continues after the last saved round and ends with the same weights as an uninterrupted run.

The file lives outside the rule's declared outputs (``resume/`` by default), so Snakemake's handling
of incomplete outputs never removes it; it is deleted once the stage's outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmlp.atomic import atomic_path

log = logging.getLogger(__name__)


def fingerprint(*parts: object, files: tuple[Path, ...] = ()) -> str:
    """What a run depends on: settings (JSON-able) and the contents of its input files."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in files:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    key: str  # fingerprint of the run; a state saved by a different run is ignored
    every: int = 1

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated file cannot happen (atomic writes), a foreign one can
            log.warning("ignoring unreadable resume state %s (%s)", self.path, type(exc).__name__)
            return None
        if not isinstance(payload, dict) or payload.get("key") != self.key:
            log.warning("ignoring resume state %s: it belongs to a run with other settings or inputs", self.path)
            return None
        log.info("resuming from %s after round %d", self.path, payload["round"])
        return payload

    def due(self, round_number: int, last: bool) -> bool:
        return not last and round_number % self.every == 0

    def save(self, payload: dict[str, Any]) -> None:
        with atomic_path(self.path, now=True) as tmp, open(tmp, "wb") as handle:  # now: it must outlive a failed run
            torch.save({**payload, "key": self.key}, handle)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
