"""Which sites failed, and what a run does about it: the failure policy both round loops share (the
simulation's :func:`fedmlp.federated.run` and the Flower coordinator, :mod:`fedmlp.flower.server`).

A site fails an exchange when it does not answer (Flower: an error, a timeout), or when the server
refuses its upload (:mod:`fedmlp.uploads`). Without ``min-sites`` the first failure stops the run,
with one line naming the site, the round and the exchange. With it, a failed site is dropped for
the rest of the run while at least that many sites remain, and the drop is recorded. Every failure
of a round is also told to the method's server step (:class:`Failure`, in
:attr:`fedmlp.methods.base.ServerContext.failures`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedmlp.errors import FedmlpError

log = logging.getLogger(__name__)


class SiteFailure(FedmlpError):
    """A site failed and the failure policy stops the run."""


class UploadRefused(SiteFailure):
    """An upload the guard refused, and no failure policy lets the run go on without its site."""


@dataclass(frozen=True)
class Failure:
    """A site that did not give the server an upload it accepted in one exchange of a round
    (:class:`Roster`): it failed to answer (``refused`` False: an error, no answer in time), or
    its upload was refused by the server's checks (``refused`` True, :mod:`fedmlp.uploads`)."""

    client_id: int
    exchange: str  # census, prepare or train
    reason: str  # one line, e.g. "upload refused: weights['head.weight'] has 640 non-finite value(s) (NaN or inf)"
    refused: bool = False


REFUSED = "upload refused: "  # how a refusal's reason begins


def check_min_sites(min_sites: int | None, n_sites: int, key: str) -> int:
    """``min_sites`` (None or 0: unset, given as 0) if it is 1 to ``n_sites``; else an error naming ``key``."""
    if min_sites and not 1 <= min_sites <= n_sites:
        raise FedmlpError(f"{key}: expected 1 to {n_sites} (the partition's clients), got {min_sites}")
    return min_sites or 0


def site_name(client_id: int) -> str:
    return f"site {client_id}"


def no_detail(client_id: int) -> dict[str, Any]:
    return {}


@dataclass
class Roster:
    """The sites taking part in a run, and the failure policy over them.

    ``client_ids`` shrinks in place when a site is dropped (each round's
    :class:`~fedmlp.methods.base.ServerContext` shares the list); ``failures`` is the current
    round's list (:func:`fedmlp.federated.server_round` gives it the round's ``ServerContext.failures``).
    ``min_sites`` 0 means every site must answer every exchange: ``required`` is then ``n_sites``.
    """

    client_ids: list[int]
    n_sites: int  # the sites the run was meant to have
    min_sites: int = 0
    setting: str = "config key 'train.min_sites'"  # where min_sites comes from, for messages
    name: Callable[[int], str] = site_name  # a site in messages
    detail: Callable[[int], dict[str, Any]] = no_detail  # more fields of a drop record (Flower: the node)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # every drop of the run, JSON-able
    failures: list[Failure] = field(default_factory=list)

    @property
    def required(self) -> int:
        """The fewest sites the run may go on with."""
        return self.min_sites or self.n_sites

    def fail(self, failed: dict[int, str], round_number: int, exchange: str) -> None:
        """Apply the policy to the sites in ``failed`` (client id → one-line reason): record them in
        the round's failures, then drop them, or raise (:class:`UploadRefused` for a refusal,
        :class:`SiteFailure` otherwise) if fewer than ``required`` sites would remain."""
        self.failures.extend(Failure(c, exchange, reason, reason.startswith(REFUSED)) for c, reason in failed.items())
        alive = [c for c in self.client_ids if c not in failed]
        for client_id, reason in failed.items():
            what = f"{self.name(client_id)} failed in round {round_number} ({exchange})"
            if len(alive) < self.required:
                policy = f"; {len(alive)} sites left, fewer than {self.setting} {self.min_sites}" if self.min_sites else ""
                raise (UploadRefused if reason.startswith(REFUSED) else SiteFailure)(f"{what}: {reason}{policy}")
            log.warning("%s: %s; dropped, the run continues with %d sites (%s %d)", what, reason, len(alive), self.setting, self.min_sites)
            self.dropped.append({"client_id": client_id, **self.detail(client_id), "round": round_number, "exchange": exchange,
                                 "reason": reason})
        self.client_ids[:] = alive

    def refuse(self, refused: dict[int, str], round_number: int, exchange: str) -> None:
        """The guard's hook (:attr:`fedmlp.uploads.Guard.on_refused`): a refused site is a failed site."""
        self.fail({c: REFUSED + reason for c, reason in refused.items()}, round_number, exchange)
