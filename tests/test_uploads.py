"""A federation that does not trust its sites (docs/untrusted-sites.md): the upload guard case by case,
its failure policy in the simulation and in the coordinator (loopback), and robust aggregation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_flower import FLOWER_TRAIN, MODEL, OURS_BUT_TRAIN, TRAIN, flower_processes, node_configs, run_config

from fedmlp import checkpoint, federated, runtime
from fedmlp.config import AggregationConfig, ModelConfig, TrainConfig, from_dict
from fedmlp.errors import FedmlpError
from fedmlp.flower import codec
from fedmlp.flower.job import Job, ServerSettings
from fedmlp.flower.loopback import LoopbackTransport
from fedmlp.flower.server import SiteFailure, serve
from fedmlp.methods import registry
from fedmlp.methods.base import Method
from fedmlp.methods.messages import Broadcast, Entry, Upload
from fedmlp.robust import clip_updates, median, trimmed_mean
from fedmlp.store import ImageStore
from fedmlp.uploads import SIZE_FACTOR, Guard, Limits, UploadRefused, check_upload

C, D = 5, 8
BROADCAST = Broadcast(0, {"w": torch.zeros(C, D), "b": torch.zeros(C), "n": torch.tensor(0)})
LIMITS = Limits({0: 10}, C, D, nonnegative=frozenset({"b"}))
SCHEMA = {"degree": Entry(torch.float32, ("C",), nan=True, minimum=0, maximum=1),
          "counts": Entry(torch.float32, ("C", 2), minimum=0, maximum="N"), "complete": Entry(bool)}
PAYLOAD = {"degree": torch.tensor([0.5, float("nan"), 0.1, 1.0, 0.0]), "counts": torch.ones(C, 2), "complete": True}


def honest(**change) -> Upload:
    return dataclasses.replace(Upload(0, 10, {k: v.clone() for k, v in BROADCAST.weights.items()}, loss=0.3,
                                      payload={k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in PAYLOAD.items()}),
                               **change)


def with_weight(key: str, value) -> Upload:
    upload = honest()
    upload.weights[key] = value
    return upload


def with_payload(key: str, value) -> Upload:
    upload = honest()
    upload.payload[key] = value
    return upload


def test_an_honest_upload_passes() -> None:
    assert check_upload(honest(), BROADCAST, "train", SCHEMA, LIMITS) is None
    assert check_upload(honest(weight=40.0), BROADCAST, "train", SCHEMA, LIMITS) is None  # a label-entry weight: ≤ 10 × 5


@pytest.mark.parametrize(("upload", "reason"), [
    (honest(n_samples=10**12), "claims 1000000000000 images, expected a whole number from 1 to the 10 it declared"),
    (honest(n_samples=0), "claims 0 images"),
    (honest(n_samples=True), "claims True images"),
    (honest(n_samples=10.0), "claims 10.0 images"),
    (honest(weight=1e300), "claims aggregation weight 1e+300, expected 0 to 50"),
    (honest(weight=1e18), "claims aggregation weight 1e+18"),
    (honest(weight=float("nan")), "claims aggregation weight nan"),
    (honest(weight=-1.0), "claims aggregation weight -1.0"),
    (honest(client_id=7), "client 7 is not a site of this federation"),
    (honest(loss=float("inf")), "reports loss inf, not a finite number"),
    (honest(weights=None), "sent no weights"),
    (with_weight("w", torch.zeros(3, 3)), "weights['w'] has shape (3, 3), the broadcast's (5, 8)"),
    (with_weight("w", torch.tensor(0.0)), "weights['w'] has shape (), the broadcast's (5, 8)"),
    (with_weight("w", torch.zeros(1, C, D)), "weights['w'] has shape (1, 5, 8)"),
    (with_weight("w", torch.zeros(C, D, dtype=torch.int64)), "weights['w'] is int64, the broadcast's float32"),
    (with_weight("w", torch.zeros(C, D, dtype=torch.complex64)), "weights['w'] is complex64, the broadcast's float32"),
    (with_weight("b", torch.tensor([0, 0, float("nan"), 0, 0])), "weights['b'] has 1 non-finite value(s) (NaN or inf)"),
    (with_weight("b", torch.full((C,), float("-inf"))), "weights['b'] has 5 non-finite value(s)"),
    (with_weight("b", torch.tensor([1.0, 1.0, -0.5, 1.0, 1.0])), "weights['b'] has 1 negative value(s) (a variance)"),
    (with_weight("extra", torch.zeros(1)), "weights hold 'extra', which the model does not have"),
    (with_weight("w", torch.zeros(C, D * 100)), f"is 16088 bytes, more than {SIZE_FACTOR} × the broadcast's 188"),
    (with_payload("degree", torch.tensor([float("inf")] + [0.0] * (C - 1))), "payload['degree'] has 1 infinite value(s)"),
    (with_payload("degree", torch.full((C,), 2.0)), "payload['degree'] has a value above 1 (2)"),
    (with_payload("counts", torch.full((C, 2), float("nan"))), "payload['counts'] has 10 non-finite value(s)"),
    (with_payload("counts", torch.full((C, 2), 1e12)), "payload['counts'] has a value above 10 (1e+12)"),
    (with_payload("counts", torch.ones(C, 3)), "payload['counts'] has shape (5, 3), expected (5, 2)"),
    (with_payload("counts", torch.ones(C, 2, dtype=torch.float64)), "payload['counts'] is float64, expected float32"),
    (with_payload("counts", [1, 2]), "payload['counts'] is a list, not a tensor"),
    (with_payload("complete", 1), "payload['complete'] is a int, expected bool"),
    (with_payload("smuggled", torch.zeros(1)), "payload['smuggled'] is not in the method's payload"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_a_bad_upload_is_refused_saying_what_is_wrong(upload: Upload, reason: str) -> None:
    found = check_upload(upload, BROADCAST, "train", SCHEMA, LIMITS)
    assert found is not None and found.startswith(reason) and "\n" not in found


def test_payload_entries_and_prepare_exchanges() -> None:
    upload = honest()
    del upload.payload["counts"]
    assert check_upload(upload, BROADCAST, "train", SCHEMA, LIMITS) == "payload lacks 'counts'"
    assert check_upload(honest(weights=None), BROADCAST, "prepare", SCHEMA, LIMITS) is None  # the loss is NaN there
    assert check_upload(honest(), BROADCAST, "prepare", SCHEMA, LIMITS) == "sent weights in a prepare exchange"
    optional = {k: dataclasses.replace(e, required=False) for k, e in SCHEMA.items()}
    assert check_upload(honest(payload={}), BROADCAST, "train", optional, LIMITS) is None
    assert check_upload(honest(payload={"complete": True}), BROADCAST, "train", optional, LIMITS).startswith("payload has ['complete'] of")


def test_the_guard_refuses_every_upload_of_a_refused_site() -> None:
    seen = {}
    guard = Guard({"train": SCHEMA}, Limits({0: 10, 1: 10}, C, D), on_refused=lambda refused, r, x: seen.update(refused=refused, round=r, exchange=x))
    kept = guard.screen("train", BROADCAST, [honest(), honest(client_id=1), with_weight("b", torch.full((C,), float("nan"))) ])
    assert [u.client_id for u in kept] == [1] and seen["round"] == 1 and list(seen["refused"]) == [0]
    with pytest.raises(UploadRefused, match=r"^site 0 failed in round 1 \(train\): upload refused: claims 11 images"):
        Guard({"train": SCHEMA}, LIMITS).screen("train", BROADCAST, [honest(n_samples=11)])


def test_every_method_declares_what_its_uploads_carry() -> None:
    """A declared payload entry is a tensor or a plain value; exchanges are census, prepare, train."""
    from fedmlp.methods import registry
    from fedmlp.methods.messages import EXCHANGES

    for name in registry.names():
        for exchange, schema in registry.create(name, {}).payloads.items():
            assert exchange in EXCHANGES, (name, exchange)
            assert all(isinstance(e.kind, (torch.dtype, type)) for e in schema.values()), name


# --- the simulation's policy: a method bug is caught where it arises ------------------------------


def hostile(method_name: str, client_id: int, round_index: int, corrupt) -> Method:
    """A method whose local update for one client in one round is corrupted after the fact."""
    method = registry.create(method_name, {})
    honest_update = method.local_update

    def local_update(ctx):
        upload = honest_update(ctx)
        return corrupt(upload) if (ctx.client.client_id, ctx.round) == (client_id, round_index) else upload

    method.local_update = local_update
    return method


def nan_in(key: str):
    def corrupt(upload: Upload) -> Upload:
        upload.weights[key] = torch.full_like(upload.weights[key], float("nan"))
        return upload
    return corrupt


def test_the_simulation_stops_at_a_nan_upload_naming_site_round_and_tensor(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    from fedmlp.resume import ResumePoint

    resume = ResumePoint(tmp_path / "resume.pt", "k")
    method = hostile("fedavg-masked", 1, 1, nan_in("head.weight"))
    with pytest.raises(UploadRefused, match=r"^site 1 failed in round 2 \(train\): upload refused: weights\['head.weight'\] has \d+ non-finite"):
        federated.run(store, federation, method, TrainConfig(**TRAIN), ModelConfig(**MODEL), 0, runtime.resolve("cpu", "fp32", 1),
                      resume=resume)
    saved = resume.load()
    assert saved["round"] == 1 and all(bool(torch.isfinite(v).all()) for v in saved["global"].values() if v.is_floating_point())


def test_a_server_step_that_gives_nan_is_stopped_before_the_model(store: ImageStore, federation: dict) -> None:
    method = registry.create("fedavg-masked", {})
    method.aggregate = lambda server, updates: {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                                for k, v in updates[0].weights.items()}
    with pytest.raises(FedmlpError, match=r"^round 1: fedavg-masked's server step gave a bad model: the aggregate\['"):
        federated.run(store, federation, method, TrainConfig(**TRAIN), ModelConfig(**MODEL), 0, runtime.resolve("cpu", "fp32", 1))


# --- the coordinator's policy (sites in this process, Flower's wire format) ------------------------


class HostileTransport(LoopbackTransport):
    """Client 2's site answers round 2's training with an upload altered by ``corrupt``."""

    def __init__(self, job, nodes, corrupt):
        super().__init__(job, nodes)
        self.corrupt = corrupt

    def ask(self, requests, timeout):
        replies = super().ask(requests, timeout)
        for node, (kind, content) in requests.items():
            if node == 1002 and kind == "train" and int(content["meta"]["round"]) == 1:
                replies[node].content = codec.uploads_to_content([self.corrupt(u) for u in codec.content_to_uploads(replies[node].content)])
        return replies


HOSTILE = {
    "n_samples": (lambda u: dataclasses.replace(u, n_samples=10**12), "claims 1000000000000 images"),
    "weight": (lambda u: dataclasses.replace(u, weight=1e300), "claims aggregation weight 1e+300"),
    "shape": (lambda u: dataclasses.replace(u, weights={**u.weights, "head.bias": torch.zeros(3, 3)}), "weights['head.bias'] has shape (3, 3)"),
    "dtype": (lambda u: dataclasses.replace(u, weights={**u.weights, "head.bias": u.weights["head.bias"].to(torch.int64)}), "is int64"),
    "nan": (nan_in("head.weight"), "weights['head.weight'] has"),
    "oversized": (lambda u: dataclasses.replace(u, payload={"junk": torch.zeros(10**6)}), "bytes, more than 4 × the broadcast's"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_min_sites_drops_a_hostile_site_and_the_run_goes_on(store: ImageStore, federation: dict, tmp_path: Path, kind: str) -> None:
    corrupt, reason = HOSTILE[kind]
    nodes = node_configs(tmp_path, store, federation)
    config = run_config(tmp_path, store, "fedavg-partial", **{"min-sites": 2})
    job = Job.from_run_config(config)
    serve(job, ServerSettings.from_run_config(config), HostileTransport(job, nodes, corrupt))
    report = json.loads((tmp_path / "out/federation.json").read_text())
    assert report["status"] == "completed" and report["rounds_done"] == 3
    (dropped,) = report["dropped"]
    assert (dropped["client_id"], dropped["round"], dropped["exchange"]) == (2, 2, "train")
    assert dropped["reason"].startswith("upload refused: ") and reason in dropped["reason"]
    model, _ = checkpoint.load(tmp_path / "out/model.pt")
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())


def test_without_min_sites_a_hostile_site_stops_the_run_in_one_line(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    nodes = node_configs(tmp_path, store, federation)
    config = run_config(tmp_path, store, "fedavg-partial", **{"resume-state": str(tmp_path / "resume.pt"), "resume-key": "k"})
    job = Job.from_run_config(config)
    with pytest.raises(SiteFailure, match=r"^site 2 \(node 1002\) failed in round 2 \(train\): upload refused: weights\['head.weight'\]"):
        serve(job, ServerSettings.from_run_config(config), HostileTransport(job, nodes, nan_in("head.weight")))
    saved = torch.load(tmp_path / "resume.pt", weights_only=True)  # round 1's state, never a poisoned one
    assert saved["round"] == 1 and all(bool(torch.isfinite(v).all()) for v in saved["global"].values() if v.is_floating_point())
    assert not (tmp_path / "out/model.pt").exists()


def seen_by_the_server_step(monkeypatch: pytest.MonkeyPatch, method_name: str) -> list[tuple]:
    """(round, selected, answered, failures) of every server step a run of ``method_name`` makes."""
    cls = type(registry.create(method_name, {}))
    aggregate, seen = cls.aggregate, []

    def recording(self, server, updates):
        seen.append((server.round, list(server.selected), list(server.answered), list(server.failures)))
        return aggregate(self, server, updates)

    monkeypatch.setattr(cls, "aggregate", recording)
    return seen


def test_with_min_sites_the_simulation_drops_a_refused_site_and_its_server_step_sees_it(
        store: ImageStore, federation: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedmlp.resume import ResumePoint

    seen = seen_by_the_server_step(monkeypatch, "fedavg-masked")
    train, model, rt = TrainConfig(**TRAIN, min_sites=2), ModelConfig(**MODEL), runtime.resolve("cpu", "fp32", 1)
    resume = ResumePoint(tmp_path / "resume.pt", "k")
    result = federated.run(store, federation, hostile("fedavg-masked", 1, 1, nan_in("head.weight")), train, model, 0, rt, resume=resume)
    assert [(r, s, a) for r, s, a, _ in seen] == [(0, [0, 1, 2], [0, 1, 2]), (1, [0, 1, 2], [0, 2]), (2, [0, 2], [0, 2])]
    (failure,) = seen[1][3]
    assert (failure.client_id, failure.exchange, failure.refused) == (1, "train", True)
    assert failure.reason.startswith("upload refused: weights['head.weight'] has")
    (dropped,) = result.dropped
    assert (dropped["client_id"], dropped["round"], dropped["exchange"]) == (1, 2, "train")
    saved = resume.load()  # after round 2 (the last round is never saved): the drop is part of the state
    assert saved["round"] == 2 and saved["client_ids"] == [0, 2] and saved["dropped"] == result.dropped
    resumed = federated.run(store, federation, registry.create("fedavg-masked", {}), train, model, 0, rt, resume=resume)
    assert resumed.dropped == result.dropped and seen[-1][1] == [0, 2]
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), resumed.model.state_dict().values()))


def test_min_sites_of_the_simulation_bounds_the_drops_and_is_checked(store: ImageStore, federation: dict) -> None:
    model, rt = ModelConfig(**MODEL), runtime.resolve("cpu", "fp32", 1)
    with pytest.raises(UploadRefused, match=r"^site 1 failed in round 2 \(train\): upload refused: .*; 2 sites left, fewer than "
                                            r"config key 'train.min_sites' 3$"):
        federated.run(store, federation, hostile("fedavg-masked", 1, 1, nan_in("head.weight")), TrainConfig(**TRAIN, min_sites=3), model, 0, rt)
    with pytest.raises(FedmlpError, match=r"^config key 'train.min_sites': expected 1 to 3 \(the partition's clients\), got 4$"):
        federated.run(store, federation, registry.create("fedavg-masked", {}), TrainConfig(**TRAIN, min_sites=4), model, 0, rt)
    with pytest.raises(FedmlpError, match=r"config key 'train.min_sites'"):
        from_dict(TrainConfig, {"min_sites": 0}, "train")


def test_the_server_step_sees_which_site_was_refused_in_flower(store: ImageStore, federation: dict, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen = seen_by_the_server_step(monkeypatch, "fedavg-partial")
    nodes = node_configs(tmp_path, store, federation)
    config = run_config(tmp_path, store, "fedavg-partial", **{"min-sites": 2})
    job = Job.from_run_config(config)
    serve(job, ServerSettings.from_run_config(config), HostileTransport(job, nodes, nan_in("head.weight")))
    assert [(r, s, a) for r, s, a, _ in seen] == [(0, [0, 1, 2], [0, 1, 2]), (1, [0, 1, 2], [0, 1]), (2, [0, 1], [0, 1])]
    assert seen[0][3] == [] and seen[2][3] == []
    (failure,) = seen[1][3]
    assert (failure.client_id, failure.exchange, failure.refused) == (2, "train", True)
    assert failure.reason.startswith("upload refused: weights['head.weight'] has")


HOSTILE_SITE = '''"""Our ClientApp, except that a site with node config poison="nan" or "images" alters its training uploads."""
import dataclasses

import torch
from flwr.app import Message

from fedmlp.flower import codec
''' + OURS_BUT_TRAIN + '''

@app.train()
def train(msg, context):
    reply = ours(msg, context)
    poison = context.node_config.get("poison")
    if not poison:
        return reply
    uploads = codec.content_to_uploads(reply.content)
    if poison == "nan":
        uploads = [dataclasses.replace(u, weights={k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                                   for k, v in u.weights.items()}) for u in uploads]
    else:
        uploads = [dataclasses.replace(u, n_samples=10**12) for u in uploads]
    return Message(codec.uploads_to_content(uploads), reply_to=msg)
'''


@pytest.mark.slow
def test_a_flower_federation_drops_its_poisoning_sites(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    """A real federation on loopback (SuperLink + 3 SuperNodes): site 1 uploads NaN weights, site 2 claims
    10**12 images; with min-sites 1 both are refused in round 1 and the run ends with site 0's model."""
    from fedmlp.flower.app import write_app
    from fedmlp.flower.job import DEFAULTS
    from fedmlp.flower.local import LocalRun, run_federation

    partition_file = tmp_path / "partition.json"
    partition_file.write_text(json.dumps(federation))
    nodes = [{"store": str(store.root), "client-id": c["id"], "partition": str(partition_file), "state-dir": str(tmp_path / "sites")}
             for c in federation["clients"]]
    nodes[1]["poison"], nodes[2]["poison"] = "nan", "images"
    (tmp_path / "test.json").write_text(json.dumps(federation["test"]))
    config = {**DEFAULTS, "method": "fedavg-partial", "train": FLOWER_TRAIN, "model": json.dumps(MODEL), "num-sites": 3, "min-sites": 1,
              "test-store": str(store.root), "test-images": str(tmp_path / "test.json"), "out-model": str(tmp_path / "out/model.pt"),
              "out-rounds": str(tmp_path / "out/rounds.csv"), "out-federation": str(tmp_path / "out/federation.json")}
    app_dir = write_app(tmp_path / "app", client_app="hostile_site:app", extra_files={"hostile_site.py": HOSTILE_SITE})
    run = run_federation(LocalRun(tmp_path / "work", nodes, config, app_dir, timeout=200))
    report = json.loads((tmp_path / "out/federation.json").read_text())
    assert report["status"] == "completed" and run.status == "finished:completed" and report["rounds_done"] == 2
    reasons = {d["client_id"]: (d["round"], d["reason"]) for d in report["dropped"]}
    assert reasons[1][0] == 1 and reasons[1][1].startswith("upload refused: weights[") and "non-finite" in reasons[1][1]
    assert reasons[2] == (1, "upload refused: claims 1000000000000 images, expected a whole number from 1 to the "
                             f"{len(federation['clients'][2]['images'])} it declared")
    model, _ = checkpoint.load(tmp_path / "out/model.pt")
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())
    assert flower_processes(tmp_path / "work") == []


def test_a_site_claiming_another_sites_client_id_is_refused_at_join(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    """Run config site-nodes binds each client id to the node its authenticated key was registered as
    (fedmlp federate --secure fills it from flwr supernode register)."""
    nodes = node_configs(tmp_path, store, federation)
    bound = json.dumps({"0": 1000, "1": 1001, "2": 9999})
    config = run_config(tmp_path, store, "fedavg-partial", **{"site-nodes": bound})
    job = Job.from_run_config(config)
    with pytest.raises(SiteFailure, match=r"^the site at node 1002 failed to join \(hello\): says it is client 2, whose key is registered as node 9999"):
        serve(job, ServerSettings.from_run_config(config), LoopbackTransport(job, nodes))
    config = run_config(tmp_path, store, "fedavg-partial", **{"site-nodes": bound, "min-sites": 2})
    serve(job, ServerSettings.from_run_config(config), LoopbackTransport(job, nodes))
    report = json.loads((tmp_path / "out/federation.json").read_text())
    assert report["status"] == "completed" and [s["client_id"] for s in report["sites"]] == [0, 1]
    assert report["dropped"][0]["node_id"] == 1002 and "site-nodes" in report["dropped"][0]["reason"]
    with pytest.raises(FedmlpError, match="^run config 'site-nodes': expected a JSON object"):
        ServerSettings.from_run_config(run_config(tmp_path, store, "fedavg-partial", **{"site-nodes": "[1, 2]"}))


# --- robust aggregation ------------------------------------------------------------------------------


def stack(*values: float) -> list[Upload]:
    return [Upload(i, 1, {"x": torch.tensor([v]), "n": torch.tensor(i)}) for i, v in enumerate(values)]


def test_median_and_trimmed_mean_ignore_one_outlier_and_claimed_weights() -> None:
    updates = stack(1.0, 2.0, 3.0, 1e30)
    assert median(updates)["x"].item() == 2.5 and median(updates)["n"].item() == 3
    assert trimmed_mean(updates, 0.25)["x"].item() == 2.5
    assert trimmed_mean(stack(1.0, 2.0, 6.0), 0.2)["x"].item() == 3.0  # floor(0.2 × 3) = 0: the plain mean
    heavy = [dataclasses.replace(u, weight=1e300 if i == 3 else 1.0) for i, u in enumerate(updates)]
    assert median(heavy)["x"].item() == 2.5


def test_clipping_bounds_each_update_relative_to_the_broadcast() -> None:
    reference = {"x": torch.tensor([1.0, 1.0]), "n": torch.tensor(0)}
    far, near = Upload(0, 1, {"x": torch.tensor([4.0, 5.0]), "n": torch.tensor(1)}), Upload(1, 1, {"x": torch.tensor([1.5, 1.0]), "n": torch.tensor(1)})
    clipped = clip_updates([far, near], reference, 1.0)
    assert torch.allclose(clipped[0].weights["x"], torch.tensor([1.6, 1.8])) and clipped[1] is near


def test_robust_rules_run_and_refuse_a_method_with_its_own_average(store: ImageStore, federation: dict) -> None:
    rt = runtime.resolve("cpu", "fp32", 1)
    train = TrainConfig(**TRAIN, aggregation=AggregationConfig("median", clip_norm=5.0))
    result = federated.run(store, federation, registry.create("fedavg-masked", {}), train, ModelConfig(**MODEL), 0, rt)
    assert len(result.history) == 3
    with pytest.raises(FedmlpError, match=r"^config key 'train.aggregation.rule': 'median' replaces the weighted mean, and surgical's"):
        federated.run(store, federation, registry.create("surgical", {}), train, ModelConfig(**MODEL), 0, rt)


@pytest.mark.parametrize(("data", "key"), [({"rule": "mode"}, "train.aggregation.rule"), ({"trim_fraction": 0.5}, "train.aggregation.trim_fraction"),
                                           ({"clip_norm": 0}, "train.aggregation.clip_norm")])
def test_bad_aggregation_settings_name_their_key(data: dict, key: str) -> None:
    with pytest.raises(FedmlpError, match=f"config key '{key}'"):
        from_dict(TrainConfig, {"aggregation": data}, "train")
