"""Flower deployment (fedmlp.flower): the message conversion, the coordinator and sites in one process
(every method), and real federations on loopback (SuperLink + 3 SuperNodes) against the simulation."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import test_methods_contract as contract
import torch
from conftest import bin_dir
from hidden import permuted_labels, write_store

from fedmlp import checkpoint, federated, runtime
from fedmlp.atomic import write_json
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.errors import FedmlpError
from fedmlp.flower import codec
from fedmlp.flower.job import DEFAULTS, Job, ServerSettings
from fedmlp.flower.loopback import LoopbackTransport, over_the_wire
from fedmlp.flower.server import SiteFailure, serve
from fedmlp.flower.site import SiteConfig
from fedmlp.methods import registry
from fedmlp.methods.messages import Broadcast, Upload
from fedmlp.store import ImageStore

TRAIN = {"rounds": 3, "batch_size": 8, "precision": "fp32", "device": "cpu"}
MODEL = {"width": 4}
FIXED = {"tau0": {"min": 0, "max": 1, "fixed": 0.3}, "tau1": {"min": 0, "max": 1, "fixed": 0.3}}
# Settings that make a 3-round run exercise each method (as in test_methods_contract.py).
SETTINGS = {
    "fedmlp": {"warmup_rounds": 1},
    "fedmlp-fixed": {"warmup_rounds": 1, **FIXED},
    "fedmlp-official": {"warmup_rounds": 1, **FIXED},
    "cbafed": {"tau_base": 0.0, "tau_min": 0.505},
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bits(a) == bits(b)


def same_value(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and same_tensor(a, b)
    if isinstance(a, float):
        return type(b) is float and a.hex() == b.hex()
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(type(k) is type(k2) for k, k2 in zip(a, b)) \
            and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# --- message conversion ------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16, torch.int32,
          torch.int64, torch.bool]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tensors_cross_the_wire_bit_for_bit(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 3, 4, 5, generator=g) * 100
    if dtype.is_floating_point:
        raw.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    tensors = [raw.to(dtype), raw.to(dtype).to(memory_format=torch.channels_last), raw.to(dtype)[:, 1:, ::2].transpose(0, 2),
               raw.to(dtype)[0, 0, 0, 0], torch.empty(0, 7, dtype=dtype)]
    broadcast = Broadcast(4, {f"w{i}": t for i, t in enumerate(tensors)}, {"t": tensors})
    back, control = codec.content_to_broadcast(over_the_wire(codec.broadcast_to_content(broadcast, {"visits": [0, 1]})))
    assert back.round == 4 and control == {"visits": [0, 1]}
    for i, t in enumerate(tensors):
        assert same_tensor(t, back.weights[f"w{i}"]) and same_tensor(t, back.payload["t"][i])


def test_payload_structure_and_plain_values_survive() -> None:
    payload = {
        "prototypes": {"global": torch.randn(5, 2, 3), "per_class": {0: torch.ones(3), 4: (0.1, float("nan"))}},
        "thresholds": {2: (0.25, 1e-300), 3: (float("inf"), -0.0)},
        "flags": [True, False, None, "text", 7, 2**70, -1],
        "nested": [[torch.tensor(True)], ({"k": 1.5},)],
        "empty": {},
    }
    uploads = [
        Upload(2, 19, {"a": torch.randn(3), "n": torch.tensor(7)}, loss=0.123456789012345678, weight=None, payload=payload),
        Upload(2, 19, None, loss=float("nan"), weight=3.25, payload={}),
    ]
    back = codec.content_to_uploads(over_the_wire(codec.uploads_to_content(uploads)))
    assert len(back) == 2
    for u, v in zip(uploads, back):
        assert (u.client_id, u.n_samples) == (v.client_id, v.n_samples)
        assert same_value(u.loss, v.loss) and u.weight == v.weight
        assert (u.weights is None) == (v.weights is None)
        if u.weights is not None:
            assert list(u.weights) == list(v.weights) and all(same_tensor(u.weights[k], v.weights[k]) for k in u.weights)
        assert same_value(u.payload, v.payload)


@pytest.mark.parametrize(("value", "where"), [(np.float32(1.0), "payload\\['x'\\]"), ({"y": [object()]}, "payload\\['x'\\]\\['y'\\]\\[0\\]"),
                                              (np.zeros(3), "numpy.ndarray")])
def test_unsendable_values_are_refused_by_name(value, where: str) -> None:
    with pytest.raises(TypeError, match=where):
        codec.broadcast_to_content(Broadcast(0, {}, {"x": value}))


def test_payload_summary_names_keys_dtypes_and_shapes() -> None:
    summary = codec.payload_summary({"prototypes": torch.zeros(5, 2, 16), "defined": torch.zeros(5, 2, dtype=torch.bool)})
    assert summary == "prototypes: float32[5, 2, 16], defined: bool[5, 2]"


# --- coordinator and sites in this process (Flower's wire format, fresh site objects per message) ---


def run_config(tmp: Path, store: ImageStore, method: str, **extra) -> dict:
    config = {**DEFAULTS, "method": method, "seed": 0, "train": json.dumps(TRAIN), "model": json.dumps(MODEL),
              "method-settings": json.dumps(SETTINGS.get(method, {})), "job-id": f"job-{method}", "num-sites": 3,
              "test-store": str(store.root), "test-images": str(tmp / "partition.json"), "val-images": str(tmp / "partition.json"),
              "out-model": str(tmp / "out/model.pt"),
              "out-rounds": str(tmp / "out/rounds.csv"), "out-federation": str(tmp / "out/federation.json")}
    config.update(extra)
    return config


def node_configs(tmp: Path, store: ImageStore, federation: dict) -> dict[int, dict]:
    write_json(tmp / "partition.json", federation)
    return {1000 + c["id"]: {"store": str(store.root), "client-id": c["id"], "partition": str(tmp / "partition.json"),
                             "state-dir": str(tmp / "sites")} for c in federation["clients"]}


def simulate(store: ImageStore, federation: dict, method: str) -> federated.RunResult:
    return federated.run(store, federation, registry.create(method, SETTINGS.get(method, {})), TrainConfig(**TRAIN), ModelConfig(**MODEL),
                         0, runtime.resolve("cpu", "fp32", 1))


@pytest.mark.parametrize("method", registry.names())
def test_every_method_runs_through_the_messages_as_in_the_simulation(store: ImageStore, validated_federation: dict, tmp_path: Path,
                                                                    method: str) -> None:
    nodes = node_configs(tmp_path, store, validated_federation)
    config = run_config(tmp_path, store, method)
    job = Job.from_run_config(config)
    serve(job, ServerSettings.from_run_config(config), LoopbackTransport(job, nodes))
    expected = simulate(store, validated_federation, method)
    model, meta = checkpoint.load(tmp_path / "out/model.pt")
    for (key, a), b in zip(expected.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), key
    rows = [list(map(float, line.split(",")[1:])) for line in (tmp_path / "out/rounds.csv").read_text().splitlines()[1:]]
    assert [[r.train_loss, r.test_mAP, r.test_AUROC, r.val_mAP, r.val_AUROC] for r in expected.history] == rows  # every round scored
    assert all(np.isfinite(row[3]) for row in rows)  # the server scores the validation set too
    assert meta["method"] == method and "dropped_sites" not in meta
    assert not (tmp_path / "sites").exists() or not any((tmp_path / "sites").rglob("*.pt")), "site state is removed at the end"


def test_fedmlp_with_prior_degrees_and_its_census_runs_as_in_the_simulation(store: ImageStore, validated_federation: dict,
                                                                           tmp_path: Path, monkeypatch) -> None:
    """degree_scale: prior adds a census (a prepare message whose payload asks for label counts)."""
    monkeypatch.setitem(SETTINGS, "fedmlp", {**SETTINGS["fedmlp"], "degree_scale": "prior"})
    test_every_method_runs_through_the_messages_as_in_the_simulation(store, validated_federation, tmp_path, "fedmlp")


@pytest.mark.parametrize("method", ["fedmlp", "fedavg-fixmatch", "fedirm", "cbafed"])
def test_sites_with_permuted_hidden_labels_upload_the_same(store: ImageStore, validated_federation: dict, tmp_path: Path,
                                                         method: str) -> None:
    """The leakage test through the Flower site: every site opens a copy of the store whose hidden labels
    (the clients' missing classes, the test and validation images') are permuted (tests/hidden.py); with
    the contract suite's settings, which open each method's pseudo-label path, the federation's model is
    the simulation's on the true store, bit for bit, so no site's upload depended on them."""
    permuted = write_store(store, permuted_labels(store, validated_federation), tmp_path / "permuted")
    nodes = {node: {**config, "store": str(permuted)} for node, config in node_configs(tmp_path, store, validated_federation).items()}
    config = run_config(tmp_path, store, method, **{"method-settings": json.dumps(contract.SETTINGS.get(method, {}))})
    job = Job.from_run_config(config)
    serve(job, ServerSettings.from_run_config(config), LoopbackTransport(job, nodes))
    expected = federated.run(store, validated_federation, contract.create(method), TrainConfig(**TRAIN), ModelConfig(**MODEL), 0,
                             runtime.resolve("cpu", "fp32", 1))
    assert max(r["rate"] for r in expected.gates if r["gate"] == contract.GATES[method]) > 0, "the pseudo-label path stayed empty"
    model, _ = checkpoint.load(tmp_path / "out/model.pt")
    for (key, a), b in zip(expected.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), key


class FailingTransport(LoopbackTransport):
    """Client 2's site raises in the training exchange of round 2."""

    def ask(self, requests, timeout):
        replies = super().ask({n: r for n, r in requests.items() if not (n == 1002 and r[0] == "train" and self.round(r) == 1)}, timeout)
        for node, (kind, content) in requests.items():
            if node == 1002 and kind == "train" and self.round((kind, content)) == 1:
                from fedmlp.flower.server import Reply

                replies[node] = Reply(error="OSError: [Errno 5] Input/output error: 'images.npy'")
        return replies

    @staticmethod
    def round(request) -> int:
        return int(request[1]["meta"]["round"]) if request[1] is not None else -1


def test_a_failed_site_stops_the_run_by_default_naming_it(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    nodes = node_configs(tmp_path, store, federation)
    config = run_config(tmp_path, store, "fedavg-partial")
    job = Job.from_run_config(config)
    with pytest.raises(SiteFailure, match=r"^site 2 \(node 1002\) failed in round 2 \(train\): OSError: \[Errno 5\]"):
        serve(job, ServerSettings.from_run_config(config), FailingTransport(job, nodes))
    report = json.loads((tmp_path / "out/federation.json").read_text())
    assert report["status"] == "failed" and report["error"].startswith("site 2 (node 1002) failed in round 2") and report["rounds_done"] == 1
    assert not (tmp_path / "out/model.pt").exists()


def test_min_sites_continues_without_the_failed_site_and_records_it(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    nodes = node_configs(tmp_path, store, federation)
    config = run_config(tmp_path, store, "fedavg-partial", **{"min-sites": 2})
    job = Job.from_run_config(config)
    serve(job, ServerSettings.from_run_config(config), FailingTransport(job, nodes))
    report = json.loads((tmp_path / "out/federation.json").read_text())
    assert report["status"] == "completed" and report["rounds_done"] == 3
    assert [(d["client_id"], d["round"], d["exchange"]) for d in report["dropped"]] == [(2, 2, "train")]
    _, meta = checkpoint.load(tmp_path / "out/model.pt")
    assert meta["dropped_sites"][0]["client_id"] == 2
    config = run_config(tmp_path, store, "fedavg-partial", **{"min-sites": 3})
    with pytest.raises(SiteFailure, match="2 sites left, fewer than run config 'min-sites' 3"):
        serve(job, ServerSettings.from_run_config(config), FailingTransport(job, nodes))


def test_coordinator_restart_resumes_with_the_sites_state(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    """A coordinator that stops after round 2 (its resume state saved) and starts again ends with the
    simulation's weights: the sites continue from the state version it names."""
    nodes = node_configs(tmp_path, store, federation)
    config = run_config(tmp_path, store, "fedmlp", **{"resume-state": str(tmp_path / "resume.pt"), "resume-key": "k"})
    job = Job.from_run_config(config)

    class Crash(LoopbackTransport):
        def ask(self, requests, timeout):
            if any(kind == "prepare" and int(content["meta"]["round"]) == 2 for kind, content in requests.values()):
                raise KeyboardInterrupt  # the coordinator is stopped in round 3
            return super().ask(requests, timeout)

    with pytest.raises(KeyboardInterrupt):
        serve(job, ServerSettings.from_run_config(config), Crash(job, nodes))
    assert (tmp_path / "resume.pt").exists() and any((tmp_path / "sites").rglob("*.pt"))
    serve(job, ServerSettings.from_run_config(config), LoopbackTransport(job, nodes))
    assert json.loads((tmp_path / "out/federation.json").read_text())["resumed_after"] == 2
    model, _ = checkpoint.load(tmp_path / "out/model.pt")
    expected = simulate(store, federation, "fedmlp").model
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), model.state_dict().values()))
    assert not (tmp_path / "resume.pt").exists()


@pytest.mark.parametrize(("config", "message"), [
    ({"client-id": 0, "partition": "p.json"}, "node config 'store': required"),
    ({"store": "s", "client-id": "0", "partition": "p.json"}, "node config 'client-id': expected an integer"),
    ({"store": "s", "client-id": 0}, "give 'partition'"),
    ({"store": "s", "client-id": 0, "partition": "p", "annotated-classes": "a"}, "not both"),
])
def test_site_node_config_errors_are_one_line(config: dict, message: str) -> None:
    with pytest.raises(FedmlpError, match=message):
        SiteConfig.from_node_config(config)


def test_site_from_an_image_list_and_annotated_classes(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    entry = federation["clients"][1]
    (tmp_path / "images.txt").write_text("\n".join(entry["images"]))
    site = SiteConfig.from_node_config({"store": str(store.root), "client-id": 1, "images": str(tmp_path / "images.txt"),
                                        "annotated-classes": ",".join(entry["annotated_classes"])})
    assert site.partition_entry(store)["clients"] == [{"id": 1, "images": entry["images"], "annotated_classes": entry["annotated_classes"]}]
    bad = SiteConfig.from_node_config({"store": str(store.root), "client-id": 1, "annotated-classes": "epidural,nosuch"})
    with pytest.raises(FedmlpError, match="'nosuch' is not a class"):
        bad.partition_entry(store)


# --- real federations on loopback -----------------------------------------------------------------

FLOWER_TRAIN = json.dumps({"rounds": 2, "batch_size": 8, "precision": "fp32", "device": "cpu"})
FLOWER_SETTINGS = {"fedavg-partial": "{}", "fedmlp": json.dumps({"warmup_rounds": 1})}


def flower_processes(work: Path) -> list[int]:
    """Processes that still carry this federation's FLWR_HOME in their environment."""
    marker = f"FLWR_HOME={work / 'flwr_home'}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in environ.split(b"\0") and state != "Z":
                found.append(int(entry))
    return found


def server_store_of(store: ImageStore, ids: list[str], out: Path) -> Path:
    """A store of only ``ids`` (the server's test images), so the server provably needs no site data."""
    out.mkdir(parents=True)
    rows = store.rows(ids)
    np.save(out / "images.npy", np.ascontiguousarray(store.images[rows]))
    lines = (store.root / "labels.csv").read_text().splitlines()
    (out / "labels.csv").write_text("\n".join([lines[0], *(lines[1 + r] for r in rows)]) + "\n")
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest.update(n_images=len(ids), positives={c: int(store.labels[rows, i].sum()) for i, c in enumerate(store.classes)},
                    sha256={"images.npy": sha256(out / "images.npy"), "labels.csv": sha256(out / "labels.csv")})
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def fedmlp_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([f"{bin_dir()}/fedmlp", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "FEDMLP_PROGRESS": "0"})


def common_args(store: ImageStore, partition: Path, method: str, out: Path) -> list[str]:
    return ["--store", str(store.root), "--partition", str(partition), "--method", method, "--seed", "0", "--train", FLOWER_TRAIN,
            "--model", json.dumps(MODEL), "--method-settings", FLOWER_SETTINGS[method], "--out-model", str(out / "model.pt"),
            "--out-rounds", str(out / "rounds.csv")]


@pytest.fixture(scope="module")
def partition_file(validated_federation: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """With a validation set: ``fedmlp federate`` gives the server its validation images too."""
    path = tmp_path_factory.mktemp("flower-partition") / "partition.json"
    write_json(path, validated_federation)
    return path


@pytest.fixture(scope="module")
def simulated(store: ImageStore, partition_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """``fedmlp train`` outputs per method: what the federation must reproduce."""
    def run(method: str) -> Path:
        out = tmp_path_factory.mktemp(f"sim-{method}")
        result = fedmlp_command("train", *common_args(store, partition_file, method, out))
        assert result.returncode == 0, result.stderr[-2000:]
        return out
    cache: dict[str, Path] = {}
    return lambda method: cache.setdefault(method, run(method))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedavg-partial", "fedmlp"])
def test_federation_on_loopback_gives_the_simulation_bytes(store: ImageStore, validated_federation: dict, partition_file: Path, simulated,
                                                           tmp_path: Path, method: str) -> None:
    server_store = server_store_of(store, validated_federation["test"] + validated_federation["val"], tmp_path / "test-store")
    start = time.monotonic()
    result = fedmlp_command("federate", *common_args(store, partition_file, method, tmp_path / "out"),
                            "--test-store", str(server_store), "--work-dir", str(tmp_path / "work"), "--timeout", "240")
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    expected = simulated(method)
    assert sha256(tmp_path / "out/model.pt") == sha256(expected / "model.pt")
    assert (tmp_path / "out/rounds.csv").read_bytes() == (expected / "rounds.csv").read_bytes()
    report = json.loads((tmp_path / "out/federation.json").read_text())
    assert report["status"] == "completed" and [s["client_id"] for s in report["sites"]] == [0, 1, 2] and not report["dropped"]
    assert flower_processes(tmp_path / "work") == []
    print(f"{method}: fedmlp federate {seconds:.1f} s")


# The start of a test ClientApp that is ours in every exchange but training (which each test adds).
OURS_BUT_TRAIN = '''
from flwr.clientapp import ClientApp

from fedmlp.flower.client_app import app as ours

app = ClientApp()


@app.query("hello")
def hello(msg, context):
    return ours(msg, context)


@app.train("prepare")
def prepare(msg, context):
    return ours(msg, context)
'''

FAULTY_SITE = '''"""Our ClientApp, except that the site with node config fail-in-round=N raises in that round's training."""
''' + OURS_BUT_TRAIN + '''

@app.train()
def train(msg, context):
    if int(msg.content["meta"]["round"]) + 1 == context.node_config.get("fail-in-round"):
        raise RuntimeError("the site's disk is on fire")
    return ours(msg, context)
'''


@pytest.mark.slow
def test_a_site_whose_clientapp_raises_stops_the_federation(store: ImageStore, federation: dict, partition_file: Path,
                                                            tmp_path: Path) -> None:
    """Over TLS with SuperNode authentication (credentials made here, offline): site 2 raises in round 1."""
    from fedmlp.flower.app import write_app
    from fedmlp.flower.local import LocalRun, run_federation

    nodes = [{"store": str(store.root), "client-id": c["id"], "partition": str(partition_file), "state-dir": str(tmp_path / "sites")}
             for c in federation["clients"]]
    nodes[2]["fail-in-round"] = 1
    (tmp_path / "test.json").write_text(json.dumps(federation["test"]))
    config = {**DEFAULTS, "method": "fedavg-partial", "train": FLOWER_TRAIN, "model": json.dumps(MODEL), "num-sites": 3,
              "test-store": str(store.root), "test-images": str(tmp_path / "test.json"), "out-model": str(tmp_path / "out/model.pt"),
              "out-rounds": str(tmp_path / "out/rounds.csv"), "out-federation": str(tmp_path / "out/federation.json")}
    app_dir = write_app(tmp_path / "app", client_app="faulty_site:app", extra_files={"faulty_site.py": FAULTY_SITE})
    run = run_federation(LocalRun(tmp_path / "work", nodes, config, app_dir, timeout=200, secure=True))
    link_log = (tmp_path / "work/logs/superlink.log").read_text()
    assert "running on https://127.0.0.1:" in link_log and link_log.count("[ControlServicer.RegisterNode] Created node_id") == 3
    assert "site-nodes" in (tmp_path / "work/run-config.toml").read_text()  # client ids bound to the registered keys' nodes
    report = json.loads((tmp_path / "out/federation.json").read_text())
    assert report["status"] == "failed" and run.status == "finished:failed"
    assert report["error"].startswith("site 2 (node ") and "failed in round 1 (train): RuntimeError: the site's disk is on fire" in report["error"]
    assert "\n" not in report["error"]
    assert not (tmp_path / "out/model.pt").exists() and not (tmp_path / "out/rounds.csv").exists()
    assert flower_processes(tmp_path / "work") == []


@pytest.mark.slow
def test_interrupted_federation_stops_every_process_and_resumes(store: ImageStore, partition_file: Path, simulated,
                                                                tmp_path: Path) -> None:
    state = tmp_path / "resume" / "state.pt"
    command = [f"{bin_dir()}/fedmlp", "federate", *common_args(store, partition_file, "fedavg-partial", tmp_path / "out"),
               "--work-dir", str(tmp_path / "work"), "--resume-state", str(state), "--timeout", "240"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "FEDMLP_PROGRESS": "0"})
    deadline = time.monotonic() + 200
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state.exists(), "round 1 was never saved"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr.strip().endswith("fedmlp federate: interrupted"), stderr[-2000:]
    assert flower_processes(tmp_path / "work") == [] and not (tmp_path / "out/model.pt").exists()
    result = fedmlp_command(*command[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "out/federation.json").read_text())["resumed_after"] == 1
    assert sha256(tmp_path / "out/model.pt") == sha256(simulated("fedavg-partial") / "model.pt")
    assert not state.exists() and not (tmp_path / "resume/state.pt.sites").exists() and flower_processes(tmp_path / "work") == []


def test_federate_refuses_bad_options_in_one_line(store: ImageStore, partition_file: Path, tmp_path: Path) -> None:
    result = fedmlp_command("federate", *common_args(store, partition_file, "fedavg-partial", tmp_path), "--min-sites", "4")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "fedmlp federate: error: --min-sites: expected 1 to 3 (the partition's clients), got 4"


def test_federate_reports_a_site_failure_in_one_line_with_status_1(store: ImageStore, partition_file: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from fedmlp import cli
    from fedmlp.flower import local

    def failed_run(run: local.LocalRun) -> local.LocalRun:
        error = "site 1 (node 7) failed in round 2 (train): RuntimeError: disk"
        # as the ServerApp, another process, writes it (not through this command's output group)
        Path(run.run_config["out-federation"]).write_text(json.dumps({"status": "failed", "error": error, "site_failure": True}))
        run.status = "finished:failed"
        return run

    monkeypatch.setattr(local, "run_federation", failed_run)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["federate", *common_args(store, partition_file, "fedavg-partial", tmp_path / "out"), "--work-dir", str(tmp_path / "w")])
    assert exit_info.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == f"fedmlp federate: error: site 1 (node 7) failed in round 2 (train): RuntimeError: disk (logs in {tmp_path / 'w' / 'logs'})"


def test_a_site_that_never_connects(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    nodes = node_configs(tmp_path, store, federation)
    del nodes[1001]
    job = Job.from_run_config(run_config(tmp_path, store, "fedavg-partial"))
    config = run_config(tmp_path, store, "fedavg-partial", **{"connect-timeout": 0.2})
    with pytest.raises(SiteFailure, match=r"only 2 of 3 sites connected within 0 s \(run config 'connect-timeout'\)"):
        serve(job, ServerSettings.from_run_config(config), LoopbackTransport(job, nodes))
    config = run_config(tmp_path, store, "fedavg-partial", **{"connect-timeout": 0.2, "min-sites": 2})
    serve(job, ServerSettings.from_run_config(config), LoopbackTransport(job, nodes))
    report = json.loads((tmp_path / "out/federation.json").read_text())
    assert report["status"] == "completed" and [s["client_id"] for s in report["sites"]] == [0, 2]
    assert report["dropped"][0]["exchange"] == "connect"


@pytest.mark.parametrize(("change", "message"), [
    (lambda info: {**info, "code": "0123456789abcdef"}, r"site 1 \(node 1001\) runs other fedmlp code than the server"),
    (lambda info: {**info, "store": json.dumps({**json.loads(info["store"]), "size": 64})},
     r"site 1 \(node 1001\) has a store with size 64, the server's test store 32"),
])
def test_a_site_with_other_code_or_preprocessing_is_refused(store: ImageStore, federation: dict, tmp_path: Path, change,
                                                            message: str) -> None:
    nodes = node_configs(tmp_path, store, federation)
    config = run_config(tmp_path, store, "fedavg-partial", **{"min-sites": 1})
    job = Job.from_run_config(config)

    class Other(LoopbackTransport):
        def ask(self, requests, timeout):
            replies = super().ask(requests, timeout)
            if 1001 in replies and requests[1001][0] == "hello":
                replies[1001].content = change(replies[1001].content)
            return replies

    with pytest.raises(SiteFailure, match=message):
        serve(job, ServerSettings.from_run_config(config), Other(job, nodes))
