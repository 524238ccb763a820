"""A hospital's side of a Flower run: what its ClientApp does with each message.

Flower starts a fresh ClientApp process for every message, so nothing survives in memory between
messages. Each message is answered by the same :class:`fedmlp.federated.Site` the simulation uses,
built anew from the site's own inputs, and the client's state (the method's per-client state, e.g.
FedMLP's pseudo-labels) is kept on the site's disk between messages, one file per version
``(round, phase)`` (phase 0: after the prepare exchange; 1: after training). The server names the
version each message continues from and the versions it may still ask for (its resume point), so a
restarted coordinator continues from its last saved round with the sites' matching state.

What a site is told through its SuperNode's node config (``--node-config``, TOML values):

- ``store``: its image store (written by ``fedmlp ingest`` from its own raw data);
- ``client-id``: its client id in the federation (an integer, unique);
- either ``partition`` (a partition JSON; the entry with ``client-id`` is used) or ``images`` (a text
  file, one image ID per line; empty or absent: every image of the store) with ``annotated-classes``
  (comma-separated class names);
- ``state-dir``: where its state between messages is kept (default ``$FLWR_HOME/fedmlp-sites``).

Everything else (method, seed, settings) comes from the run config, the same for every site.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedmlp.errors import FedmlpError
from fedmlp.flower import codec
from fedmlp.flower.job import Job

log = logging.getLogger(__name__)

Version = tuple[int, int]  # (round index, phase): phase 0 after the prepare exchange, 1 after training


@dataclass(frozen=True)
class SiteConfig:
    store: Path
    client_id: int
    partition: Path | None
    images: Path | None
    annotated_classes: list[str] | None
    state_dir: Path

    @classmethod
    def from_node_config(cls, config: dict[str, Any]) -> SiteConfig:
        def text(key: str) -> str | None:
            value = config.get(key)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise FedmlpError(f"node config '{key}': expected a quoted string, got {value!r}")
            return value

        store = text("store")
        if store is None:
            raise FedmlpError("node config 'store': required (the site's image store, from 'fedmlp ingest')")
        client_id = config.get("client-id")
        if isinstance(client_id, bool) or not isinstance(client_id, int):
            raise FedmlpError(f"node config 'client-id': expected an integer, got {client_id!r}")
        partition, images, annotated = text("partition"), text("images"), text("annotated-classes")
        if partition is None and annotated is None:
            raise FedmlpError("node config: give 'partition' (a partition JSON) or 'annotated-classes' (and optionally 'images')")
        if partition is not None and (images is not None or annotated is not None):
            raise FedmlpError("node config 'partition': give it or 'images'/'annotated-classes', not both")
        home = os.environ.get("FLWR_HOME") or str(Path.home() / ".flwr")
        state_dir = text("state-dir") or str(Path(home) / "fedmlp-sites")
        return cls(Path(store), client_id, Path(partition) if partition else None, Path(images) if images else None,
                   [c.strip() for c in annotated.split(",") if c.strip()] if annotated is not None else None, Path(state_dir))

    def partition_entry(self, store: Any) -> dict[str, Any]:
        """This site's partition: the classes and its one client entry (the form ``build_clients`` takes)."""
        from fedmlp.commands.common import read_json

        if self.partition is not None:
            partition = read_json(self.partition)
            entries = [e for e in partition.get("clients", []) if e.get("id") == self.client_id]
            if not entries:
                raise FedmlpError(f"{self.partition}: has no client with id {self.client_id} (node config 'client-id')")
            return {"classes": partition.get("classes"), "clients": entries}
        unknown = [c for c in self.annotated_classes or [] if c not in store.classes]
        if unknown:
            raise FedmlpError(f"node config 'annotated-classes': {unknown[0]!r} is not a class of {self.store} ({', '.join(store.classes)})")
        if self.images is None:
            ids = list(store.image_ids)
        else:
            try:
                ids = self.images.read_text().split()
            except OSError as exc:
                raise FedmlpError(f"{self.images}: cannot read the image list (node config 'images'): {exc.strerror}") from None
        return {"classes": store.classes, "clients": [{"id": self.client_id, "images": ids, "annotated_classes": self.annotated_classes}]}


class StateFiles:
    """One client's state between messages: a file per version under ``<state-dir>/<job>/client<id>``."""

    def __init__(self, root: Path):
        self.root = root

    def _path(self, version: Version) -> Path:
        return self.root / f"round{version[0]:06d}-phase{version[1]}.pt"

    def versions(self) -> list[Version]:
        if not self.root.is_dir():
            return []
        out = []
        for path in self.root.glob("round*-phase*.pt"):
            round_text, phase_text = path.stem.removeprefix("round").split("-phase")
            out.append((int(round_text), int(phase_text)))
        return sorted(out)

    def load(self, version: Version | None) -> dict[str, Any] | None:
        if version is None:
            return None
        path = self._path(version)
        if not path.exists():
            raise FedmlpError(f"{path}: missing: the server continues from this site's state after round {version[0] + 1} "
                              f"({'prepare' if version[1] == 0 else 'training'}), which this site does not have "
                              "(another state-dir, or removed)")
        return torch.load(path, map_location="cpu", weights_only=True)

    def save(self, version: Version, state: dict[str, Any], keep: set[Version]) -> None:
        from fedmlp.atomic import atomic_path

        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._path(version)) as tmp, open(tmp, "wb") as handle:
            torch.save(state, handle)
        self.prune(keep | {version})

    def prune(self, keep: set[Version]) -> None:
        for version in self.versions():
            if version not in keep:
                self._path(version).unlink(missing_ok=True)
        for directory in (self.root, self.root.parent):  # the client's, then the job's directory, once empty
            if directory.is_dir() and not any(directory.iterdir()):
                shutil.rmtree(directory, ignore_errors=True)


class SiteRunner:
    """Opens the site's inputs and answers one message with the simulation's :class:`~fedmlp.federated.Site`."""

    def __init__(self, job: Job, site: SiteConfig):
        from fedmlp import federated
        from fedmlp.store import ImageStore

        self.job, self.config = job, site
        self.method = job.method()
        self.runtime = job.runtime()
        self.store = ImageStore.open(site.store)
        (self.client,) = federated.build_clients(self.store, site.partition_entry(self.store), self.method)
        self.files = StateFiles(site.state_dir / job.job_id / f"client{site.client_id}")

    def hello(self) -> dict[str, Any]:
        """Who this site is (client id, number of images, annotated classes), what its store holds
        (classes, windowing, size) and which fedmlp code it runs (a fingerprint)."""
        from fedmlp.flower.job import code_fingerprint, preprocessing

        return {"client_id": self.client.client_id, "n_samples": len(self.client), "store": json.dumps(preprocessing(self.store)),
                "annotated": json.dumps([c for c, a in zip(self.store.classes, self.client.annotated.tolist()) if a]),
                "code": code_fingerprint(self.job.method_name)}

    def _site(self):
        from fedmlp import federated

        template = federated.init_model(self.job.model_config, len(self.store.classes), self.job.seed, self.runtime)
        return federated.Site(self.method, [self.client], self.store, self.job.train, self.runtime, self.job.seed, template)

    def answer(self, kind: str, content: Any) -> Any:
        """``kind`` is ``prepare`` or ``train``; ``content`` a RecordDict from :func:`codec.broadcast_to_content`."""
        broadcast, control = codec.content_to_broadcast(content)
        keep = {tuple(v) for v in control.get("keep", [])}
        site = self._site()
        saved = self.files.load(tuple(control["state_from"]) if control.get("state_from") is not None else None)
        if saved is not None:
            site.load_states([saved])
        cid = self.client.client_id
        if kind == "prepare":
            uploads, version = [site.prepare(cid, broadcast)], (broadcast.round, 0)
        else:
            uploads = [site.train_client(cid, broadcast, visit) for visit in control["visits"]]
            version = (broadcast.round, 1)
        if control.get("final"):
            self.files.prune(keep)
        else:
            self.files.save(version, site.states[cid], keep)
        return codec.uploads_to_content(uploads)
