"""The federated training loop, generic over methods, as a simulation in one process.

Each round the server side of the method (:class:`~fedmlp.methods.base.ServerContext`) chooses the
clients and what to broadcast; each client's side runs in a :class:`Site`, which holds that client's
data, state and models and answers the broadcast with an upload; the server step combines the
uploads into the new global model, which is scored on the test set and on the validation set (if
the partition has one) for the per-round curves (the reported result is the final round's; the
best-validation round is reported beside it, :func:`fedmlp.metrics.best_val_round`). Server and
sites exchange nothing but :mod:`fedmlp.methods.messages`, so the same :class:`Site` serves a real
deployment (:mod:`fedmlp.flower`). The round loop itself (:func:`run_rounds`) is the Flower
coordinator's too: only its :class:`Sites` differ (:class:`LocalSites` here).

Random streams come from :mod:`fedmlp.seeding`, one per (client, round) and one per server round,
so a run is a pure function of its inputs and seed.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from fedmlp.compute import Compute, Passes
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.failures import Roster, check_min_sites
from fedmlp.inference import predict_proba
from fedmlp.loader import ClientData, make_client, n_batches
from fedmlp.methods.base import GATES, LocalContext, Method, ServerContext, broadcast_of
from fedmlp.methods.messages import CENSUS, Broadcast, Upload
from fedmlp.metrics import ranking_metrics
from fedmlp.models import Classifier, build_model
from fedmlp.progress import bar
from fedmlp.resume import BadResumeState, ResumePoint, check_clients, check_roster, check_state
from fedmlp.robust import clip_updates, combiner
from fedmlp.runtime import Runtime
from fedmlp.seeding import int_seed, torch_generator
from fedmlp.store import ImageStore
from fedmlp.uploads import Guard, Limits, check_aggregate, exchange_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundRecord:
    """One round's results. No wall-clock time here: records are artifacts and must be reproducible
    (the time per round is in the log, and per job in Snakemake's benchmark files)."""

    round: int
    train_loss: float
    test_mAP: float
    test_AUROC: float
    val_mAP: float = float("nan")  # NaN without a validation set or in a round not scored (and in resume states of before)
    val_AUROC: float = float("nan")


@dataclass(frozen=True)
class Scored:
    """A fully labelled image set the server scores the global model on: the test or the validation set."""

    rows: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, store: ImageStore, image_ids: list[str]) -> Scored:
        rows = store.rows(image_ids)
        return cls(rows, store.labels[rows])

    def score(self, model: Classifier, store: ImageStore, runtime: Runtime) -> dict[str, float]:
        """Macro AP and AUROC; NaN for an empty set (no validation set)."""
        if len(self.rows) == 0:
            return {"mAP": float("nan"), "AUROC": float("nan")}
        return ranking_metrics(self.labels, predict_proba(model, store, self.rows, runtime))


def build_clients(store: ImageStore, partition: dict[str, Any], method: Method) -> list[ClientData]:
    if partition["classes"] != store.classes:
        raise FedmlpError(f"partition classes {partition['classes']} do not match the store's {store.classes}")
    clients = []
    for entry in partition["clients"]:
        annotated = store.classes if method.label_access == "full" else entry["annotated_classes"]
        clients.append(make_client(store, entry["id"], entry["images"], annotated))
    return clients


def init_model(model_config: ModelConfig, n_classes: int, seed: int, runtime: Runtime) -> Classifier:
    """The round-0 global model: the same for every method given a seed (paired comparisons)."""
    torch.manual_seed(int_seed(seed, "model-init"))
    return build_model(model_config, n_classes).to(runtime.device, memory_format=torch.channels_last)


class Site:
    """The client side of a method for one or more clients (one per hospital in a deployment): their
    data, their state across rounds, and the models their local work runs in, whose passes it counts
    (``passes``, :mod:`fedmlp.compute`). It keeps the store's label-free view only
    (:meth:`~fedmlp.store.ImageStore.view`), and the clients' true labels only for a method that
    declares it reads them (:meth:`~fedmlp.methods.base.Method.reads_hidden_labels`, a diagnostic)."""

    def __init__(self, method: Method, clients: list[ClientData], store: ImageStore, train: TrainConfig,
                 runtime: Runtime, seed: int, template: Classifier):
        self.method, self.images, self.train, self.runtime, self.seed = method, store.view(), train, runtime, seed
        self.clients = {c.client_id: c for c in clients}
        self.hidden = ({c.client_id: torch.from_numpy(store.labels[c.rows].astype(np.int8)) for c in clients}
                       if method.reads_hidden_labels() else {})
        self.states = {c.client_id: method.init_client_state(c) for c in clients}
        self.model = copy.deepcopy(template)
        self.teacher = copy.deepcopy(template).eval().requires_grad_(False)
        self.scratch = copy.deepcopy(template).eval().requires_grad_(False)
        self.passes = Passes()
        self.passes.watch(self.model, self.teacher, self.scratch)

    def _context(self, client_id: int, broadcast: Broadcast, visit: int, on_batch: Callable[[], None]) -> LocalContext:
        self.model.load_state_dict(broadcast.weights)
        self.teacher.load_state_dict(broadcast.weights)
        path = ("client", client_id, "round", broadcast.round) + (("visit", visit) if visit else ())
        return LocalContext(
            round=broadcast.round,
            total_rounds=self.method.n_rounds(self.train),
            client=self.clients[client_id],
            model=self.model,
            teacher=self.teacher,
            scratch=self.scratch,
            state=self.states[client_id],
            store=self.images,
            runtime=self.runtime,
            train=self.train,
            generator=torch_generator(self.seed, *path),
            payload=broadcast.payload,
            on_batch=on_batch,
            hidden_labels=self.hidden.get(client_id),
        )

    def prepare(self, client_id: int, broadcast: Broadcast) -> Upload:
        """The answer to a prepare broadcast, or to a census request (:data:`~fedmlp.methods.messages.CENSUS`)."""
        ctx = self._context(client_id, broadcast, 0, lambda: None)
        answer = self.method.client_census if broadcast.payload.get(CENSUS) is True else self.method.client_prepare
        return Upload(client_id, len(ctx.client), payload=answer(ctx))

    def begin(self, client_id: int, broadcast: Broadcast) -> None:
        """Only the start of a local update (:meth:`Method.before_training`), e.g. to export a detection."""
        self.method.before_training(self._context(client_id, broadcast, 0, lambda: None))

    def train_client(self, client_id: int, broadcast: Broadcast, visit: int = 0, on_batch: Callable[[], None] = lambda: None) -> Upload:
        return self.method.local_update(self._context(client_id, broadcast, visit, on_batch))

    def state_list(self) -> list[dict[str, Any]]:
        return [self.states[i] for i in sorted(self.states)]

    def load_states(self, states: list[dict[str, Any]]) -> None:
        self.states = dict(zip(sorted(self.states), states))

    def compute(self, rounds: int) -> Compute:
        """The passes counted so far, over this site's images and ``rounds`` rounds."""
        return Compute(sum(len(c) for c in self.clients.values()), rounds, self.passes)

    def take_gates(self) -> dict[int, dict[str, float]]:
        """Each client's gate rates of the round just trained (:func:`fedmlp.methods.base.record_gate`),
        removed from its state so that a later round without them logs nothing."""
        return {i: self.states[i].pop(GATES) for i in sorted(self.states) if GATES in self.states[i]}


def server_context(method: Method, train: TrainConfig, global_model: Classifier, client_ids: list[int], round_index: int,
                   seed: int, runtime: Runtime) -> ServerContext:
    return ServerContext(round_index, method.n_rounds(train), global_model, client_ids,
                         torch_generator(seed, "server", "round", round_index), runtime, combiner(train.aggregation))


def guard_for(method: Method, train: TrainConfig, model: Classifier, declared: dict[int, int], **policy: Any) -> Guard:
    """The upload checks of a run (:mod:`fedmlp.uploads`): ``declared`` is each site's number of
    images as the server knows it; ``policy`` may set ``on_refused`` (default: stop the run)."""
    variances = frozenset(f"{name}.running_var" for name, module in model.named_modules()
                          if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_var is not None)
    limits = Limits(declared, model.head.out_features, model.head.in_features, train.local_epochs, variances)
    return Guard(method.payloads, limits, train.aggregation, **policy)


def exchange(method: Method, server: ServerContext, global_model: Classifier, answer_prepare: Callable[[list[int], Broadcast], list[Upload]]) -> Broadcast:
    """The training broadcast of a round, after its census and its prepare exchange if the method has them."""
    if method.census(server.round):
        method.server_census(server, answer_prepare(server.client_ids, broadcast_of(server.round, global_model, {CENSUS: True})))
    broadcast = broadcast_of(server.round, global_model, method.broadcast_payload(server))
    if method.prepares(server.round):
        broadcast.payload.update(method.server_prepare(server, answer_prepare(server.client_ids, broadcast)))
    return broadcast


def start_round(store: ImageStore, partition: dict[str, Any], method: Method, train: TrainConfig, runtime: Runtime, seed: int,
                model: Classifier, round_index: int) -> Site:
    """A round up to the start of local training (its prepare exchange, then each client's
    :meth:`~fedmlp.methods.base.Method.before_training`), without training: FedMLP's pseudolabel stage."""
    clients = build_clients(store, partition, method)
    site = Site(method, clients, store, train, runtime, seed, model)
    ids = [c.client_id for c in clients]
    server = server_context(method, train, model, ids, round_index, seed, runtime)
    broadcast = exchange(method, server, model, lambda ids, b: [site.prepare(i, b) for i in ids])
    for client_id in ids:
        site.begin(client_id, broadcast)
    return site


RoundCallback = Callable[[int, list[ClientData], list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass
class RunResult:
    model: Classifier
    history: list[RoundRecord]
    round_rows: list[dict[str, Any]]  # whatever ``on_round_end`` returned, in round order
    compute: Compute  # the clients' passes over the rounds trained (a resumed run's earlier rounds included)
    gates: list[dict[str, Any]] = field(default_factory=list)  # gate_rows of every round, in round order
    dropped: list[dict[str, Any]] = field(default_factory=list)  # sites the failure policy dropped (train.min_sites)


GATE_FIELDS = ("round", "side", "unit", "gate", "rate")  # one gate's rate in one round for one client or server unit


def gate_rows(round_number: int, clients: dict[int, dict[str, float]], server: dict[str, list[float]]) -> list[dict[str, Any]]:
    """A round's gate rates as rows: side ``client`` (unit: the client id) and side ``server`` (unit:
    the index of the value in :meth:`~fedmlp.methods.base.Method.server_gates`, e.g. the group)."""
    rows = [{"round": round_number, "side": "client", "unit": client_id, "gate": gate, "rate": rate}
            for client_id, rates in clients.items() for gate, rate in sorted(rates.items())]
    rows += [{"round": round_number, "side": "server", "unit": unit, "gate": gate, "rate": float(rate)}
             for gate, values in sorted(server.items()) for unit, rate in enumerate(values)]
    return rows


def visits(tasks: list[int]) -> list[int]:
    """How many times each entry's client already appeared earlier in the list (its visit number)."""
    seen: dict[int, int] = {}
    out = []
    for client_id in tasks:
        out.append(seen.get(client_id, 0))
        seen[client_id] = out[-1] + 1
    return out


def server_round(method: Method, train: TrainConfig, global_model: Classifier, roster: Roster, round_index: int, seed: int,
                 runtime: Runtime, answer_prepare: Callable[[list[int], Broadcast], list[Upload]],
                 answer_train: Callable[[list[int], Broadcast], list[Upload]], guard: Guard) -> list[Upload]:
    """The server's side of one round: its exchanges, then the aggregate loaded into ``global_model``.
    ``answer_prepare``/``answer_train`` deliver a broadcast to the given clients (a training task list
    may repeat a client; see :func:`visits`) and return the uploads of those that answered, in that
    order: in this process (:func:`run`) or over a network (:mod:`fedmlp.flower`); a site that does
    not answer goes to ``roster``'s failure policy. Every upload passes ``guard`` first (whose
    ``on_refused`` is ``roster.refuse``: a refused site is a failed site), and the aggregate is
    checked before it is loaded. The round's :class:`~fedmlp.methods.base.ServerContext` records
    the training tasks, the sites whose uploads were accepted and every failure of the round."""
    server = server_context(method, train, global_model, roster.client_ids, round_index, seed, runtime)
    roster.failures = server.failures

    def screened_prepare(ids: list[int], broadcast: Broadcast) -> list[Upload]:
        return guard.screen(exchange_of(broadcast, training=False), broadcast, answer_prepare(ids, broadcast))

    broadcast = exchange(method, server, global_model, screened_prepare)
    server.selected = method.select_clients(server)
    updates = guard.screen("train", broadcast, answer_train(list(server.selected), broadcast))
    server.answered = sorted({u.client_id for u in updates})
    if not updates:
        raise FedmlpError(f"round {round_index + 1}: no upload to aggregate")
    combined = updates if train.aggregation.clip_norm is None else clip_updates(updates, broadcast.weights, train.aggregation.clip_norm)
    weights = method.aggregate(server, combined)
    if server.combine is not None and not server.averaged:
        raise FedmlpError(f"config key 'train.aggregation.rule': {train.aggregation.rule!r} replaces the weighted mean, "
                          f"and {method.name}'s server step aggregates by its own rule; use mean")
    check_aggregate(weights, broadcast, method.name, guard.limits)
    global_model.load_state_dict(weights)
    return updates


def round_record(round_index: int, updates: list[Upload], global_model: Classifier, store: ImageStore, test: Scored,
                 val: Scored, runtime: Runtime, score: bool) -> RoundRecord:
    """The round's training loss (size-weighted over the uploads) and, if ``score``, the test and
    validation metrics (the same rounds, so that a best-validation round has its test score)."""
    nan = {"mAP": float("nan"), "AUROC": float("nan")}
    test_scores, val_scores = (test.score(global_model, store, runtime), val.score(global_model, store, runtime)) if score else (nan, nan)
    loss = sum(u.loss * u.n_samples for u in updates) / sum(u.n_samples for u in updates)
    return RoundRecord(round_index + 1, loss, test_scores["mAP"], test_scores["AUROC"], val_scores["mAP"], val_scores["AUROC"])


def log_round(method: Method, record: RoundRecord, total: int, seconds: float) -> None:
    log.info("%s round %d/%d: train loss %.4f, test mAP %.4f, AUROC %.4f, validation mAP %.4f (%.1f s)",
             method.name, record.round, total, record.train_loss, record.test_mAP, record.test_AUROC, record.val_mAP, seconds)


class Sites(Protocol):
    """The part of a run's loop (:func:`run_rounds`) that differs between the simulation and a Flower
    run: how the server reaches its sites, and what of theirs a resume state holds."""

    def answer_prepare(self, ids: list[int], broadcast: Broadcast) -> list[Upload]: ...

    def answer_train(self, tasks: list[int], broadcast: Broadcast, last: bool) -> list[Upload]: ...

    def check(self, saved: dict[str, Any]) -> None:
        """Raise :class:`~fedmlp.resume.BadResumeState` unless the sites' part of ``saved`` can be continued."""
        ...

    def restore(self, saved: dict[str, Any]) -> None: ...

    def state(self) -> dict[str, Any]:
        """The sites' part of a resume state."""
        ...

    def finish_round(self, record: RoundRecord) -> None:
        """After a round, before its resume state is saved: what the round adds to that state."""
        ...

    def end_round(self, record: RoundRecord, saved: bool) -> None:
        """After a round (``saved``: its state was just saved for resuming)."""
        ...


def run_rounds(method: Method, train: TrainConfig, seed: int, runtime: Runtime, global_model: Classifier, rounds: range,
               roster: Roster, guard: Guard, sites: Sites, store: ImageStore, test: Scored, val: Scored,
               resume: ResumePoint | None = None, on_record: Callable[[RoundRecord], None] | None = None) -> list[RoundRecord]:
    """The round loop both :func:`run` and the Flower coordinator (:mod:`fedmlp.flower.server`) run:
    resume (checked, then restored all or nothing), then each round (:func:`server_round`: selection,
    exchanges, the guard, the failure policy of ``roster``, aggregation), its record (scored every
    ``train.eval_every`` rounds and in the last), and the resume state after every ``resume.every``
    rounds. ``on_record`` gets each round's record as it is completed, the restored rounds' first.
    Returns the history of ``rounds`` (restored rounds included)."""
    history: list[RoundRecord] = []

    def restore(saved: dict[str, Any]) -> None:  # checks first; the method's state is replaced whole or not at all
        check_state(saved, global_model.state_dict(), rounds)
        sites.check(saved)
        alive = check_roster(saved, roster.client_ids)
        records = [RoundRecord(**record) for record in saved["history"]]
        method.load_state_dict(saved["method"])
        history.extend(records)
        global_model.load_state_dict(saved["global"])
        roster.client_ids[:], roster.dropped[:] = alive, saved.get("dropped", [])
        sites.restore(saved)

    saved = resume.load(restore) if resume is not None else None
    if saved is not None:
        rounds = range(saved["round"], rounds.stop)
    for record in history if on_record is not None else ():
        on_record(record)
    total = method.n_rounds(train)
    for round_index in rounds:
        start = time.perf_counter()
        last = round_index == rounds[-1]

        def answer_train(tasks: list[int], broadcast: Broadcast, last: bool = last) -> list[Upload]:
            return sites.answer_train(tasks, broadcast, last)

        updates = server_round(method, train, global_model, roster, round_index, seed, runtime, sites.answer_prepare, answer_train, guard)
        record = round_record(round_index, updates, global_model, store, test, val, runtime,
                              last or (round_index + 1) % train.eval_every == 0)
        history.append(record)
        log_round(method, record, total, time.perf_counter() - start)
        if on_record is not None:
            on_record(record)
        sites.finish_round(record)  # the round's gates and rows belong to the state saved after it
        due = resume is not None and resume.due(record.round, last)
        if due:
            resume.save({
                "round": record.round,
                "global": {k: v.detach().cpu() for k, v in global_model.state_dict().items()},
                "method": method.state_dict(),
                "history": history_rows(history),
                "client_ids": list(roster.client_ids),
                "dropped": list(roster.dropped),
                **sites.state(),
            })
        sites.end_round(record, due)
    return history


@dataclass
class LocalSites:
    """The simulation's sites (:class:`Sites`): every client's side in this process (one :class:`Site`)."""

    method: Method
    site: Site
    clients: list[ClientData]
    train: TrainConfig
    on_round_end: RoundCallback | None = None
    round_rows: list[dict[str, Any]] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)

    def answer_prepare(self, ids: list[int], broadcast: Broadcast) -> list[Upload]:
        return [self.site.prepare(i, broadcast) for i in ids]

    def answer_train(self, tasks: list[int], broadcast: Broadcast, last: bool) -> list[Upload]:
        sizes = {c.client_id: n_batches(len(c), self.train.batch_size) * self.train.local_epochs for c in self.clients}
        total = self.method.n_rounds(self.train)
        with bar(total=sum(sizes[i] for i in tasks), desc=f"{self.method.name} round {broadcast.round + 1}/{total}", unit="batch",
                 transient=True) as progress:
            return [self.site.train_client(i, broadcast, visit, progress.update) for i, visit in zip(tasks, visits(tasks))]

    def check(self, saved: dict[str, Any]) -> None:
        check_clients(saved, len(self.clients))
        Passes(**saved.get("passes", {}))
        if not isinstance(saved.get("round_rows"), list) or not isinstance(saved.get("gates", []), list):
            raise BadResumeState("field 'round_rows' or 'gates' missing or not a list")

    def restore(self, saved: dict[str, Any]) -> None:
        self.site.load_states(saved["clients"])
        self.round_rows = saved["round_rows"]
        if "passes" not in saved:  # a state saved before passes were counted: the rounds before it are not
            log.warning("resume state without pass counts: the run's compute leaves out rounds 1 to %d", saved["round"])
        restored = Passes(**saved.get("passes", {}))
        self.site.passes.forward_backward, self.site.passes.forward_only = restored.forward_backward, restored.forward_only
        self.gates = saved.get("gates", [])  # absent in resume states of before the gate log

    def state(self) -> dict[str, Any]:
        return {"clients": self.site.state_list(), "round_rows": self.round_rows, "passes": asdict(self.site.passes), "gates": self.gates}

    def finish_round(self, record: RoundRecord) -> None:
        self.gates.extend(gate_rows(record.round, self.site.take_gates(), self.method.server_gates()))
        if self.on_round_end is not None:
            self.round_rows.extend(self.on_round_end(record.round, self.clients, self.site.state_list()))

    def end_round(self, record: RoundRecord, saved: bool) -> None:
        pass


def run(
    store: ImageStore,
    partition: dict[str, Any],
    method: Method,
    train: TrainConfig,
    model_config: ModelConfig,
    seed: int,
    runtime: Runtime,
    rounds: range | None = None,
    initial_model: Classifier | None = None,
    on_round_end: RoundCallback | None = None,
    resume: ResumePoint | None = None,
    on_record: Callable[[RoundRecord], None] | None = None,
) -> RunResult:
    """Train ``rounds`` (default: all of the method's rounds) from ``initial_model`` (default: the
    seed's initialisation), by :func:`run_rounds` with the sites in this process. Round indices are
    absolute, so a run split into stages (FedMLP's warm-up, then stage 2) draws the same random
    streams as one uninterrupted run. With ``resume``, the state after every ``resume.every`` rounds
    is saved, and a saved state of the same run is continued."""
    rounds = rounds if rounds is not None else range(method.n_rounds(train))
    clients = build_clients(store, partition, method)
    global_model = initial_model if initial_model is not None else init_model(model_config, len(store.classes), seed, runtime)
    global_model = global_model.to(runtime.device, memory_format=torch.channels_last)
    sites = LocalSites(method, Site(method, clients, store, train, runtime, seed, global_model), clients, train, on_round_end)
    roster = Roster([c.client_id for c in clients], len(clients), check_min_sites(train.min_sites, len(clients), "config key 'train.min_sites'"))
    guard = guard_for(method, train, global_model, {c.client_id: len(c) for c in clients}, on_refused=roster.refuse)
    history = run_rounds(method, train, seed, runtime, global_model, rounds, roster, guard, sites, store,
                         Scored.of(store, partition["test"]), Scored.of(store, partition.get("val", [])), resume, on_record)
    return RunResult(global_model, history, sites.round_rows, sites.site.compute(len(rounds)), sites.gates, roster.dropped)


def history_rows(history: list[RoundRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in history]
