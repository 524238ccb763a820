"""The coordinator's side of a Flower run: the simulation's round loop, with the sites behind a transport.

The run is :func:`fedmlp.federated.run_rounds`, the loop :func:`fedmlp.federated.run` runs too
(selection, exchanges, upload checks, failure policy, aggregation, scoring, resume); the
:class:`Coordinator` is its :class:`~fedmlp.federated.Sites`: broadcasts travel to the sites as
Flower messages (:mod:`fedmlp.flower.codec`), uploads come back the same way, in the simulation's
order, and the resume state holds, per site, the version of its state it last answered with.

The server never opens a site's data. It knows each site by what the site says about itself in the
``hello`` exchange (client id, number of images, class list); with run config ``site-nodes`` (set by
``fedmlp federate --secure``) a client id is accepted only from the SuperNode whose authenticated key
was registered for it, and scores the global model on its own
test store (``test-store``, ``test-images``), as the paper's protocol does, and on the validation
images of that store (``val-images``), if any.

Failure policy: a site whose ClientApp raises, that does not answer within ``round-timeout``
seconds (a SuperNode that disappears is reported by the SuperLink once its heartbeats stop), or whose
upload the server refuses (:mod:`fedmlp.uploads`: wrong keys, shapes or dtypes, NaN or inf, too
large, more images than it declared at ``hello``, a payload other than the method's), fails
the run with one line naming the site, the round and the exchange (:class:`fedmlp.failures.Roster`,
the simulation's policy too), unless ``min-sites`` (or, when it is 0, ``train.min_sites``) is set and
at least that many sites remain: then the failed site is dropped for the rest of the run, and the
drop is recorded (log, ``federation.json``, the checkpoint's meta). No round is ever averaged over
fewer sites than the policy allows without saying so.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fedmlp.errors import FedmlpError, one_line
from fedmlp.failures import Roster, SiteFailure, check_min_sites
from fedmlp.flower import codec
from fedmlp.flower.job import Job, ServerSettings, code_fingerprint, preprocessing
from fedmlp.methods.messages import Broadcast, Upload

log = logging.getLogger(__name__)


@dataclass
class Reply:
    content: Any = None  # a RecordDict, or None when the site failed
    error: str | None = None


class Transport(Protocol):
    """How the coordinator reaches the sites: Flower's Grid (:mod:`fedmlp.flower.server_app`) or,
    in tests, the site code in this process (:mod:`fedmlp.flower.loopback`)."""

    def nodes(self) -> list[int]: ...

    def ask(self, requests: dict[int, tuple[str, Any]], timeout: float) -> dict[int, Reply]:
        """Send ``{node: (kind, content)}``; each node's reply, or an error for a node that failed
        or did not answer within ``timeout`` seconds."""
        ...


@dataclass
class SiteInfo:
    client_id: int
    node_id: int
    n_samples: int
    annotated: list[str]


@dataclass
class Outcome:
    status: str = "running"
    error: str | None = None
    sites: list[SiteInfo] = field(default_factory=list)
    rounds_done: int = 0
    resumed_after: int | None = None
    site_failure: bool = False  # the run stopped by the failure policy (not by a bad input or setting)


def wait_for_nodes(transport: Transport, wanted: int, timeout: float, required: int | None = None, poll: float = 0.5) -> list[int]:
    """The connected nodes, once ``wanted`` are; after ``timeout`` s, those there if at least ``required``."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(transport.nodes())
        if len(nodes) >= wanted:
            return nodes
        if time.monotonic() > deadline:
            if len(nodes) >= (required or wanted):
                return nodes
            raise SiteFailure(f"only {len(nodes)} of {wanted} sites connected within {timeout:.0f} s (run config 'connect-timeout')")
        time.sleep(poll)


def test_image_ids(settings: ServerSettings, store: Any) -> list[str]:
    """Run config ``test-images``; empty: every image of the test store."""
    return image_list(Path(settings.test_images), "test") if settings.test_images else list(store.image_ids)


def val_image_ids(settings: ServerSettings) -> list[str]:
    """Run config ``val-images``; empty: no validation set."""
    return image_list(Path(settings.val_images), "val", missing=[]) if settings.val_images else []


def image_list(path: Path, part: str, missing: list[str] | None = None) -> list[str]:
    """Image IDs from a JSON list, a text file of them, or a partition JSON (its ``part`` list;
    ``missing`` if it has none)."""
    key = f"run config '{part}-images'"
    try:
        text = path.read_text()
    except OSError as exc:
        raise FedmlpError(f"{path}: cannot read the {part} image list ({key}): {exc.strerror}") from None
    try:
        ids = json.loads(text)
    except json.JSONDecodeError:
        return text.split()
    if isinstance(ids, dict):  # a partition file
        ids = ids.get(part, missing)
    if not isinstance(ids, list):
        raise FedmlpError(f"{path}: expected a JSON list of image IDs or a partition JSON ({key})")
    return [str(i) for i in ids]


class Coordinator:
    def __init__(self, job: Job, settings: ServerSettings, transport: Transport):
        self.job, self.settings, self.transport = job, settings, transport
        self.outcome = Outcome()
        self.node_of: dict[int, int] = {}
        self.roster = Roster([], settings.num_sites, settings.min_sites, "run config 'min-sites'",
                             name=lambda c: f"site {c} (node {self.node_of[c]})", detail=lambda c: {"node_id": self.node_of[c]})
        self.versions: dict[int, tuple[int, int]] = {}  # per client: the state version its last answer left
        self.saved_versions: dict[int, tuple[int, int]] = {}  # the same, as of the last resume point
        self.resuming = False

    # --- exchanges ---------------------------------------------------------------------------

    def _ask(self, kind: str, contents: dict[int, Any], round_number: int) -> dict[int, Any]:
        """Contents per client id → reply contents per client id, after the failure policy."""
        replies = self.transport.ask({self.node_of[c]: (kind, content) for c, content in contents.items()},
                                     self.settings.round_timeout)
        client_of = {node: c for c, node in self.node_of.items()}
        failed = {c: "no answer" for c in contents}
        answers = {}
        for node, reply in replies.items():
            client_id = client_of[node]
            if reply.error is None:
                answers[client_id] = reply.content
                failed.pop(client_id)
            else:
                failed[client_id] = reply.error
        if failed:
            self.roster.fail(failed, round_number, kind)
        return answers

    def _control(self, client_id: int, **extra: Any) -> dict[str, Any]:
        keep = [list(self.saved_versions[client_id])] if client_id in self.saved_versions else []
        version = self.versions.get(client_id)
        return {"state_from": list(version) if version is not None else None, "keep": keep, **extra}

    def _decode(self, answers: dict[int, Any], expected: dict[int, int], broadcast: Broadcast, exchange: str) -> dict[int, list[Upload]]:
        """Each answering site's uploads; a site whose answer is too large to be the method's (checked
        before decoding), cannot be decoded or speaks for another client goes to the failure policy."""
        from fedmlp.uploads import SIZE_FACTOR, nbytes

        bound = SIZE_FACTOR * (nbytes(broadcast.weights) + nbytes(broadcast.payload))  # per upload, as the guard's
        decoded, refused = {}, {}
        for client_id, content in answers.items():
            size = codec.content_bytes(content)
            if size > bound * expected[client_id]:
                refused[client_id] = f"upload refused: {size} bytes, more than {SIZE_FACTOR} × the broadcast's for {expected[client_id]} upload(s)"
                continue
            try:
                uploads = codec.content_to_uploads(content)
            except Exception as exc:  # whatever a hostile site sends: a refusal, never the coordinator's crash
                refused[client_id] = f"upload refused: cannot be decoded ({type(exc).__name__}: {one_line(exc)})"
                continue
            if len(uploads) != expected[client_id] or any(u.client_id != client_id for u in uploads):
                refused[client_id] = (f"upload refused: answered for clients {[u.client_id for u in uploads]}, "
                                      f"expected {expected[client_id]} answer(s) for client {client_id}")
                continue
            decoded[client_id] = uploads
        if refused:
            self.roster.fail(refused, broadcast.round + 1, exchange)
        return decoded

    def answer_prepare(self, ids: list[int], broadcast: Broadcast) -> list[Upload]:
        contents = {c: codec.broadcast_to_content(broadcast, self._control(c)) for c in ids}
        answers = self._decode(self._ask("prepare", contents, broadcast.round + 1), dict.fromkeys(ids, 1), broadcast, "prepare")
        out = []
        for client_id in ids:
            if client_id in answers:
                out.extend(answers[client_id])
                self.versions[client_id] = (broadcast.round, 0)
        return out

    def answer_train(self, tasks: list[int], broadcast: Broadcast, final: bool) -> list[Upload]:
        from fedmlp.federated import visits

        per_client: dict[int, list[int]] = {}
        for client_id, visit in zip(tasks, visits(tasks)):
            per_client.setdefault(client_id, []).append(visit)
        contents = {c: codec.broadcast_to_content(broadcast, self._control(c, visits=v, final=final)) for c, v in per_client.items()}
        received = self._decode(self._ask("train", contents, broadcast.round + 1), {c: len(v) for c, v in per_client.items()},
                                broadcast, "train")
        for client_id in received:
            self.versions[client_id] = (broadcast.round, 1)
        return [received[c][v] for c, v in zip(tasks, visits(tasks)) if c in received]

    # --- the run -------------------------------------------------------------------------------

    def join(self, store: Any) -> None:
        """Wait for the sites, learn who they are, check that their stores match the server's test
        store (classes, windowing, size) and that they run the same fedmlp code."""
        ours = preprocessing(store)
        nodes = wait_for_nodes(self.transport, self.settings.num_sites, self.settings.connect_timeout, self.roster.required)
        if len(nodes) < self.settings.num_sites:
            reason = f"{self.settings.num_sites - len(nodes)} of {self.settings.num_sites} sites not connected within " \
                     f"{self.settings.connect_timeout:.0f} s"
            log.warning("%s; the run goes on with %d (min-sites %d)", reason, len(nodes), self.roster.min_sites)
            self.roster.dropped.append({"client_id": None, "node_id": None, "round": 0, "exchange": "connect", "reason": reason})
        replies = self.transport.ask({n: ("hello", None) for n in nodes}, self.settings.round_timeout)
        failed = {}
        for node in nodes:
            reply = replies.get(node, Reply(error="no answer"))
            if reply.error is not None:
                failed[node] = reply.error
                continue
            info = reply.content
            client_id = int(info["client_id"])
            bound = self.settings.site_nodes
            if bound and bound.get(client_id) != node:  # the client id must be the one its authenticated key was registered for
                owner = f"whose key is registered as node {bound[client_id]}" if client_id in bound else "which run config 'site-nodes' does not list"
                failed[node] = f"says it is client {client_id}, {owner} (run config 'site-nodes')"
                continue
            if client_id in self.node_of:
                raise SiteFailure(f"nodes {self.node_of[client_id]} and {node} both say they are client {client_id} "
                                  "(node config 'client-id' must be unique)")
            theirs = json.loads(str(info["store"]))
            if theirs != ours:
                key = next(k for k in ours if theirs.get(k) != ours[k])
                raise SiteFailure(f"site {client_id} (node {node}) has a store with {key} {theirs.get(key)!r}, "
                                  f"the server's test store {ours[key]!r}")
            if info["code"] != code_fingerprint(self.job.method_name):
                raise SiteFailure(f"site {client_id} (node {node}) runs other fedmlp code than the server (fingerprint "
                                  f"{info['code']}, the server's {code_fingerprint(self.job.method_name)}): install the same version everywhere")
            self.node_of[client_id] = node
            self.outcome.sites.append(SiteInfo(client_id, node, int(info["n_samples"]), json.loads(str(info["annotated"]))))
        if len(self.node_of) + len(failed) > self.settings.num_sites:
            raise SiteFailure(f"{len(self.node_of) + len(failed)} sites connected, run config 'num-sites' is {self.settings.num_sites}")
        self.roster.client_ids[:] = sorted(self.node_of)
        self.outcome.sites.sort(key=lambda s: s.client_id)
        for node, reason in failed.items():  # a site that cannot even open its data: the same policy, before round 1
            if len(self.node_of) < self.roster.required:
                raise SiteFailure(f"the site at node {node} failed to join (hello): {reason}")
            log.warning("the site at node %d failed to join (hello): %s; the run goes on with %d sites (min-sites %d)",
                        node, reason, len(self.node_of), self.roster.min_sites)
            self.roster.dropped.append({"client_id": None, "node_id": node, "round": 0, "exchange": "hello", "reason": reason})
        log.info("%d sites joined: %s", len(self.roster.client_ids),
                 ", ".join(f"client {s.client_id} (node {s.node_id}, {s.n_samples} images)" for s in self.outcome.sites))

    # --- the sites' part of the round loop (fedmlp.federated.Sites) ------------------------------

    def check(self, saved: dict[str, Any]) -> None:
        from fedmlp.resume import check_versions

        check_versions(saved)
        missing = sorted(set(saved["client_ids"]) - set(self.node_of))
        if missing:  # not a bad state: the run cannot go on without that site (the failure policy's error)
            raise SiteFailure(f"{self.settings.resume_state}: saved with sites {saved['client_ids']}; site {missing[0]} did not join")

    def restore(self, saved: dict[str, Any]) -> None:
        self.versions = {int(k): tuple(v) for k, v in saved["versions"].items()}
        self.saved_versions = dict(self.versions)
        self.outcome.resumed_after = saved["round"]

    def state(self) -> dict[str, Any]:
        return {"versions": {str(k): list(v) for k, v in self.versions.items()}}

    def finish_round(self, record: Any) -> None:
        pass

    def end_round(self, record: Any, saved: bool) -> None:
        self.outcome.rounds_done = record.round
        if saved:  # the sites may forget the state versions before these
            self.saved_versions = dict(self.versions)

    def run(self) -> Any:
        """:func:`fedmlp.federated.run_rounds`, with the sites behind the transport; then the outputs."""
        from fedmlp import federated
        from fedmlp.resume import ResumePoint
        from fedmlp.store import ImageStore

        job, settings = self.job, self.settings
        method, train, model_config = job.method(), job.train, job.model_config
        runtime = job.runtime()
        if not settings.min_sites and train.min_sites:  # the simulation's key, when the run config does not set its own
            self.roster.min_sites = check_min_sites(train.min_sites, settings.num_sites, "config key 'train.min_sites'")
            self.roster.setting = "config key 'train.min_sites'"
        store = ImageStore.open(Path(settings.test_store))
        test = federated.Scored.of(store, test_image_ids(settings, store))
        val = federated.Scored.of(store, val_image_ids(settings))
        self.join(store)

        global_model = federated.init_model(model_config, len(store.classes), job.seed, runtime)
        rounds = range(method.n_rounds(train))
        resume = ResumePoint(Path(settings.resume_state), settings.resume_key, every=settings.resume_every) if settings.resume_state else None
        guard = federated.guard_for(method, train, global_model, {s.client_id: s.n_samples for s in self.outcome.sites},
                                    on_refused=self.roster.refuse)
        history = federated.run_rounds(method, train, job.seed, runtime, global_model, rounds, self.roster, guard, self, store, test, val,
                                       resume)
        self.write_outputs(global_model, history, store.classes, runtime.precision, rounds.stop)
        if resume is not None:
            resume.clear()
        self.outcome.status = "completed"
        return global_model, history

    def write_outputs(self, model: Any, history: list, classes: list[str], precision: str, n_rounds: int) -> None:
        from fedmlp import checkpoint, federated
        from fedmlp.commands.training import checkpoint_meta, write_rounds

        meta = checkpoint_meta(self.job.model_config, classes, self.job.method_name, self.job.seed, n_rounds, precision)
        if self.roster.dropped:
            meta["dropped_sites"] = self.roster.dropped
        write_rounds(Path(self.settings.out_rounds), federated.history_rows(history))
        checkpoint.save(Path(self.settings.out_model), model, meta)

    def report(self, seconds: float) -> dict[str, Any]:
        o = self.outcome
        return {"status": o.status, "error": o.error, "method": self.job.method_name, "seed": self.job.seed,
                "sites": [vars(s) for s in o.sites], "dropped": self.roster.dropped, "rounds_done": o.rounds_done,
                "resumed_after": o.resumed_after, "site_failure": o.site_failure, "seconds": round(seconds, 1)}


def serve(job: Job, settings: ServerSettings, transport: Transport) -> Coordinator:
    """Run the coordinator; write ``out-federation`` (status, sites, drops) whatever happens."""
    from fedmlp.atomic import write_json

    coordinator = Coordinator(job, settings, transport)
    start = time.perf_counter()
    try:
        coordinator.run()
    except BaseException as exc:
        coordinator.outcome.status = "failed"
        coordinator.outcome.error = one_line(exc) if isinstance(exc, FedmlpError) else f"{type(exc).__name__}: {one_line(exc)}"
        coordinator.outcome.site_failure = isinstance(exc, SiteFailure)
        raise
    finally:
        if settings.out_federation:
            write_json(Path(settings.out_federation), coordinator.report(time.perf_counter() - start))
    return coordinator
