"""The run config of a Flower run: what every side reads (method, seed, settings) and what only the
server reads (sites, test store, outputs, failure policy). Keys are Flower's kebab-case run-config
keys, declared with their defaults in the app's ``pyproject.toml`` (:func:`fedmlp.flower.app.write_app`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fedmlp.errors import FedmlpError

# Every run-config key and its default. Strings hold JSON where a config section is meant.
DEFAULTS: dict[str, Any] = {
    "method": "fedavg-partial",
    "seed": 0,
    "train": "{}",
    "model": "{}",
    "method-settings": "{}",
    "job-id": "",  # names the sites' state directories; empty: the Flower run id
    # server only
    "num-sites": 1,
    "min-sites": 0,  # 0: every site must answer every exchange (a failed site stops the run)
    "test-store": "",
    "test-images": "",  # a JSON list of image IDs, or a text file of them; empty: every image of test-store
    "val-images": "",  # the same for the validation set (images of test-store); empty: no validation set
    "out-model": "",
    "out-rounds": "",
    "out-federation": "",
    "resume-state": "",
    "resume-key": "",
    "resume-every": 1,
    "connect-timeout": 300.0,  # seconds to wait for num-sites SuperNodes
    "round-timeout": 3600.0,  # seconds a site may take to answer one message
    "site-nodes": "",  # JSON {client id: node id}: the node each site's registered key was given; empty: ids are not bound
}


def _get(config: dict[str, Any], key: str, kind: type) -> Any:
    value = config.get(key, DEFAULTS[key])
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FedmlpError(f"run config '{key}': expected {kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class Job:
    """What both sides need to run the method's code: the same for the server and every site."""

    method_name: str
    seed: int
    train_json: str
    model_json: str
    settings_json: str
    job_id: str

    @classmethod
    def from_run_config(cls, config: dict[str, Any], run_id: int | None = None) -> Job:
        job_id = _get(config, "job-id", str) or f"run-{run_id}"
        return cls(_get(config, "method", str), _get(config, "seed", int), _get(config, "train", str), _get(config, "model", str),
                   _get(config, "method-settings", str), job_id)

    @property
    def train(self):
        from fedmlp.config import TrainConfig, from_json

        return from_json(TrainConfig, self.train_json, "train")

    @property
    def model_config(self):
        from fedmlp.config import ModelConfig, from_json

        return from_json(ModelConfig, self.model_json, "model")

    def method(self):
        from fedmlp.commands.common import parse_json_option
        from fedmlp.methods import registry

        return registry.create(self.method_name, parse_json_option(self.settings_json, "run config 'method-settings'"))

    def runtime(self):
        from fedmlp import runtime

        train = self.train
        return runtime.resolve(train.device, train.precision, train.threads, train.deterministic)


@dataclass(frozen=True)
class ServerSettings:
    num_sites: int
    min_sites: int
    test_store: str
    test_images: str
    val_images: str
    out_model: str
    out_rounds: str
    out_federation: str
    resume_state: str
    resume_key: str
    resume_every: int
    connect_timeout: float
    round_timeout: float
    site_nodes: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_run_config(cls, config: dict[str, Any]) -> ServerSettings:
        s = cls(*(_get(config, key, kind) for key, kind in (
            ("num-sites", int), ("min-sites", int), ("test-store", str), ("test-images", str), ("val-images", str), ("out-model", str),
            ("out-rounds", str), ("out-federation", str), ("resume-state", str), ("resume-key", str), ("resume-every", int),
            ("connect-timeout", float), ("round-timeout", float))), site_nodes(_get(config, "site-nodes", str)))
        if s.num_sites < 1:
            raise FedmlpError("run config 'num-sites': expected at least 1")
        if not 0 <= s.min_sites <= s.num_sites:
            raise FedmlpError(f"run config 'min-sites': expected 0 to num-sites ({s.num_sites}), got {s.min_sites}")
        for key in ("test-store", "out-model", "out-rounds"):
            if not config.get(key):
                raise FedmlpError(f"run config '{key}': required (an absolute path on the SuperLink's machine)")
        return s

    @property
    def required_sites(self) -> int:
        return self.min_sites or self.num_sites


def site_nodes(text: str) -> dict[int, int]:
    """Run config ``site-nodes``: which SuperNode (by the node id Flower gave its registered public
    key, ``flwr supernode register``) each client id belongs to."""
    import json

    if not text:
        return {}
    try:
        mapping = json.loads(text)
        return {int(client): int(node) for client, node in mapping.items()}
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        raise FedmlpError(f"run config 'site-nodes': expected a JSON object of client id to node id, got {text!r}") from None


@cache
def code_fingerprint(method: str) -> str:
    """The fingerprint of the fedmlp code a run of ``method`` executes, on either side (the
    workflow's notion, :mod:`fedmlp.fingerprint`): the server and every site must run the same code,
    or the same method would not compute the same thing."""
    from fedmlp import fingerprint
    from fedmlp.methods import registry

    return fingerprint.code_fingerprint("fedmlp.flower.site", "fedmlp.flower.server", registry.spec(method).module)


def preprocessing(store: Any) -> dict[str, Any]:
    """What must match between the sites' stores and the server's: classes, windowing, size, channels."""
    return {"classes": store.classes, **{k: store.manifest.get(k) for k in ("windowing", "size", "channels")}}
