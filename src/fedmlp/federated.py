"""The federated training loop, generic over methods (DESIGN §5).

Each round: every client starts from the global weights and runs the method's local update; the
method's server step combines the updates; the new global model is scored on the test set (for the
per-round curve only: the reported result is the final round's, never the best one).

Random streams come from :mod:`fedmlp.seeding`, one per (client, round), so a run is a pure
function of its inputs and seed.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.inference import predict_proba
from fedmlp.loader import ClientData, make_client, n_batches
from fedmlp.methods import LocalContext, Method, RoundContext
from fedmlp.metrics import ranking_metrics
from fedmlp.models import Classifier, build_model
from fedmlp.progress import bar
from fedmlp.resume import ResumePoint
from fedmlp.runtime import Runtime
from fedmlp.seeding import int_seed, torch_generator
from fedmlp.store import ImageStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundRecord:
    """One round's results. No wall-clock time here: records are artifacts and must be reproducible
    (the time per round is in the log, and per job in Snakemake's benchmark files)."""

    round: int
    train_loss: float
    test_mAP: float
    test_AUROC: float


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


RoundCallback = Callable[[int, list[ClientData], list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass
class RunResult:
    model: Classifier
    history: list[RoundRecord]
    round_rows: list[dict[str, Any]]  # whatever ``on_round_end`` returned, in round order


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
) -> RunResult:
    """Train ``rounds`` (default: all of the method's rounds) from ``initial_model`` (default: the
    seed's initialisation). Round indices are absolute, so a run split into stages (FedMLP's warm-up,
    then stage 2) draws the same random streams as one uninterrupted run. With ``resume``, the state
    after every ``resume.every`` rounds is saved, and a saved state of the same run is continued."""
    rounds = rounds if rounds is not None else range(method.n_rounds(train))
    clients = build_clients(store, partition, method)
    states = [method.init_client_state(client) for client in clients]
    global_model = initial_model if initial_model is not None else init_model(model_config, len(store.classes), seed, runtime)
    global_model = global_model.to(runtime.device, memory_format=torch.channels_last)
    history: list[RoundRecord] = []
    round_rows: list[dict[str, Any]] = []
    saved = resume.load() if resume is not None else None
    if saved is not None:
        global_model.load_state_dict(saved["global"])
        states = saved["clients"]
        method.load_state_dict(saved["method"])
        history = [RoundRecord(**record) for record in saved["history"]]
        round_rows = saved["round_rows"]
        rounds = range(saved["round"], rounds.stop)
    local_model = copy.deepcopy(global_model)
    teacher = copy.deepcopy(global_model).eval().requires_grad_(False)
    test_rows = store.rows(partition["test"])
    test_labels = store.labels[test_rows]
    steps = sum(n_batches(len(c), train.batch_size) for c in clients) * train.local_epochs
    total = method.n_rounds(train)

    for round_index in rounds:
        start = time.perf_counter()
        method.begin_round(RoundContext(round_index, global_model, clients, states, store, runtime, train))
        teacher.load_state_dict(global_model.state_dict())
        updates = []
        with bar(total=steps, desc=f"{method.name} round {round_index + 1}/{total}", unit="batch", transient=True) as progress:
            for client, state in zip(clients, states):
                local_model.load_state_dict(global_model.state_dict())
                ctx = LocalContext(
                    round=round_index,
                    client=client,
                    model=local_model,
                    teacher=teacher,
                    state=state,
                    store=store,
                    runtime=runtime,
                    train=train,
                    generator=torch_generator(seed, "client", client.client_id, "round", round_index),
                    on_batch=progress.update,
                )
                updates.append(method.local_update(ctx))
        global_model.load_state_dict(method.aggregate(updates, round_index))
        last = round_index == rounds[-1]
        scores = {"mAP": float("nan"), "AUROC": float("nan")}
        if last or (round_index + 1) % train.eval_every == 0:
            scores = ranking_metrics(test_labels, predict_proba(global_model, store, test_rows, runtime))
        loss = sum(u.loss * u.n_samples for u in updates) / sum(u.n_samples for u in updates)
        record = RoundRecord(round_index + 1, loss, scores["mAP"], scores["AUROC"])
        history.append(record)
        log.info("%s round %d/%d: train loss %.4f, test mAP %.4f, AUROC %.4f (%.1f s)",
                 method.name, record.round, total, loss, record.test_mAP, record.test_AUROC, time.perf_counter() - start)
        if on_round_end is not None:
            round_rows.extend(on_round_end(record.round, clients, states))
        if resume is not None and resume.due(record.round, last):
            resume.save({
                "round": record.round,
                "global": {k: v.detach().cpu() for k, v in global_model.state_dict().items()},
                "clients": states,
                "method": method.state_dict(),
                "history": history_rows(history),
                "round_rows": round_rows,
            })
    return RunResult(global_model, history, round_rows)


def history_rows(history: list[RoundRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in history]
