"""What every registered method must satisfy, checked for each one: a method added later gets these
tests without editing them. Tiny settings (3 rounds on the 80-image fixture store)."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hidden import permuted_labels, write_store

from fedmlp import checkpoint, federated, runtime
from fedmlp.cli import main
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.methods import registry
from fedmlp.methods.base import LocalContext, Method
from fedmlp.resume import ResumePoint
from fedmlp.store import ImageStore, ImageView

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)
# Settings that make a 3-round run exercise the method: FedMLP's schedule must equal train.rounds,
# and every pseudo-label path must act on the 80-image fixture (thresholds its tiny models' outputs
# reach, fractions large enough to select something from a 20-image client); GATES checks that it did.
FIXED = {"tau0": {"min": 0, "max": 1, "fixed": 0.3}, "tau1": {"min": 0, "max": 1, "fixed": 0.3}}
ADAPTIVE = {"tau0": {"min": 0.2, "max": 0.6}, "tau1": {"min": 0.2, "max": 0.6}}
SETTINGS = {
    "fedmlp": {"warmup_rounds": 1, **ADAPTIVE},
    "fedmlp-fixed": {"warmup_rounds": 1, **FIXED},
    "fedmlp-official": {"warmup_rounds": 1, **FIXED},
    "cbafed": {"tau_base": 0.0, "tau_min": 0.505},
    "fedavg-fixmatch": {"threshold_high": 0.55, "threshold_low": 0.45},
    # entry gate for the clean variant; the official code's sample gate passes with the wide entropy bound
    "fedirm": {"gate": "entry", "confidence_high": 0.55, "confidence_low": 0.45, "entropy_threshold": 10.0},
    "fedlsm": {"threshold_high": 0.505, "threshold_low": 0.495, "mix_threshold_high": 0.505, "mix_threshold_low": 0.495},
    "fednml": {"hard_high": 0.5001, "hard_low": 0.4999},
}
# The client gate (fedmlp.methods.base.record_gate) of each method's pseudo-label path: the hidden-label
# test requires a positive rate in some round, so that a path left empty fails it instead of passing.
# A method not listed must log no client gate (a new gated method fails until it is added here).
GATES = {"fedmlp": "pseudo", "fedmlp-fixed": "pseudo", "fedmlp-official": "pseudo", "cbafed": "pseudo",
         "fedavg-fixmatch": "pseudo", "fedirm": "relation", "fedlsm": "confident", "fednml": "hard",
         "ll-r": "rejected", "ll-ct": "flipped"}
# Settings that change the client side's code path, covered by the hidden-label test beside the defaults.
VARIANTS = {"fedmlp": [{"degree_scale": "prior"}],
            **{name: [{"variant": "official-code"}] for name in ("rscfed", "fedirm", "cbafed", "fednoro", "fedlsr", "fedavg-fixmatch")}}
NAMES = registry.names()


def create(name: str, extra: dict | None = None) -> Method:
    return registry.create(name, {**SETTINGS.get(name, {}), **(extra or {})})


def train(store: ImageStore, federation: dict, name: str, extra: dict | None = None, **kwargs) -> federated.RunResult:
    rt = runtime.resolve("cpu", "fp32", 1)
    return federated.run(store, federation, create(name, extra), TRAIN, MODEL, 0, rt, **kwargs)


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_every_method_is_registered_with_a_summary() -> None:
    expected = {"fedavg-full", "fedavg-partial", "fedavg-masked", "fedmlp", "fedmlp-fixed", "fedmlp-official"}
    assert expected <= set(NAMES)
    for spec in registry.specs().values():
        assert spec.summary, f"{spec.name}: no summary"
        assert (spec.section is None) == (spec.config is None), spec.name


def test_listing_the_methods_imports_no_scipy_stats() -> None:
    """Snakemake and every fedmlp job list the methods; scipy.stats (0.8 CPU-s) is for the jobs that score."""
    code = "import sys; from fedmlp.methods import registry; registry.specs(); print('scipy.stats' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("name", NAMES)
def test_trains_the_round_budget(store: ImageStore, federation: dict, name: str) -> None:
    result = train(store, federation, name)
    assert [r.round for r in result.history] == [1, 2, 3]
    assert all(np.isfinite(r.train_loss) for r in result.history) and np.isfinite(result.history[-1].test_mAP)


HIDDEN_CASES = [pytest.param(name, extra, id="-".join([name, *(f"{k}={v}" for k, v in extra.items())]))
                for name in NAMES if create(name).label_access == "partial" for extra in [{}, *VARIANTS.get(name, [])]]


@pytest.mark.parametrize(("name", "extra"), HIDDEN_CASES)
def test_hidden_labels_do_not_influence_training(store: ImageStore, federation: dict, name: str, extra: dict) -> None:
    """Flipping and permuting the true labels of every client's missing classes, and of the test images,
    leaves the weights bit-identical, with the method's pseudo-label path in use (its gate opened)."""
    original = train(store, federation, name, extra)
    permuted = train(dataclasses.replace(store, labels=permuted_labels(store, federation)), federation, name, extra)
    assert weights_equal(original.model, permuted.model)
    client_gates = {r["gate"] for r in original.gates if r["side"] == "client"}
    if name not in GATES:
        assert not client_gates, f"{name} logs client gates {client_gates}: add its pseudo-label gate to GATES"
        return
    rates = [r["rate"] for r in original.gates if r["side"] == "client" and r["gate"] == GATES[name]]
    assert rates and max(rates) > 0, f"{name}: the {GATES[name]!r} path stayed empty; the permutation tested nothing there"


def test_the_permutation_catches_training_that_reads_the_permuted_labels(store: ImageStore, federation: dict) -> None:
    """The control: fedavg-full trains on every class's true labels (label_access full, an upper bound), so
    the same permutation must change its weights; otherwise the test above could not see a leak."""
    original = train(store, federation, "fedavg-full")
    permuted = train(dataclasses.replace(store, labels=permuted_labels(store, federation)), federation, "fedavg-full")
    assert not weights_equal(original.model, permuted.model)


def reachable(root: object, name: str = "ctx", depth: int = 8):
    """(path, value) of everything reachable from ``root`` through attributes, mappings, sequences and
    closures, models and random generators excepted (their tensors are weights and seeds)."""
    seen: set[int] = set()
    stack = [(name, root, 0)]
    while stack:
        path, value, level = stack.pop()
        if id(value) in seen or level > depth:
            continue
        seen.add(id(value))
        yield path, value
        if isinstance(value, (torch.nn.Module, torch.Generator, torch.Tensor, np.ndarray, str, bytes, int, float, Path, type)):
            continue
        if isinstance(value, dict):
            children = [(f"{path}[{k!r}]", v) for k, v in value.items()]
        elif isinstance(value, (list, tuple, set)):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        elif callable(value) and hasattr(value, "__closure__"):
            children = [(f"{path}.<closure>", c.cell_contents) for c in value.__closure__ or ()]
        elif hasattr(value, "__dict__"):
            children = [(f"{path}.{k}", v) for k, v in vars(value).items()]
        else:
            children = []
        stack.extend((p, v, level + 1) for p, v in children)


@pytest.mark.parametrize("name", ["fedmlp", "fedirm", "fedavg-fixmatch", "cbafed"])
def test_a_client_side_cannot_reach_labels_through_its_context(store: ImageStore, federation: dict, name: str) -> None:
    """By type: the context a client's side gets holds the store's label-free view; walking everything it
    holds finds no attribute named labels, no label array (the store's, the client's true labels, the
    test images') and no way back to the store."""
    method = create(name)
    contexts: list[LocalContext] = []
    hook = method.before_training
    method.before_training = lambda ctx: (contexts.append(ctx), hook(ctx))[1]
    federated.run(store, federation, method, TRAIN, MODEL, 0, runtime.resolve("cpu", "fp32", 1))
    assert contexts
    ctx = contexts[-1]
    assert isinstance(ctx.store, ImageView) and not isinstance(ctx.store, ImageStore) and ctx.hidden_labels is None
    missing = ctx.client.missing.numpy()
    truth = store.labels[ctx.client.rows]
    assert truth[:, missing].any(), "the client must have a hidden positive for the check to have teeth"
    forbidden = [store.labels, truth, store.labels[store.rows(federation["test"])]]
    for path, value in reachable(ctx):
        assert not path.endswith((".labels", ".manifest", ".root")), path
        assert not isinstance(value, ImageStore), path
        if isinstance(value, (np.ndarray, torch.Tensor)):
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            assert not any(array.shape == f.shape and np.array_equal(array, f) for f in forbidden), path


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_identical_checkpoint_bytes(store: ImageStore, federation: dict, name: str, tmp_path: Path) -> None:
    for run in ("a", "b"):
        checkpoint.save(tmp_path / f"{run}.pt", train(store, federation, name).model, {"method": name})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


class Killed(Exception):
    pass


@pytest.mark.parametrize("name", NAMES)
def test_killed_and_resumed_equals_uninterrupted(store: ImageStore, federation: dict, name: str, tmp_path: Path) -> None:
    """The state saved after round 1 (weights, clients' and server's state, through torch.save with
    weights_only) continues to the same weights as a run that was never stopped."""
    whole = train(store, federation, name)
    point = ResumePoint(tmp_path / "state.pt", key="run")

    def stop_in_round_2(round_number, clients, states):
        if round_number == 2:
            raise Killed
        return []

    with pytest.raises(Killed):
        train(store, federation, name, resume=point, on_round_end=stop_in_round_2)
    assert point.load()["round"] == 1
    resumed = train(store, federation, name, resume=point)
    assert weights_equal(whole.model, resumed.model)
    assert [r.round for r in resumed.history] == [1, 2, 3]


@pytest.mark.parametrize("name", NAMES)
def test_server_state_survives_a_save_load_round_trip(store: ImageStore, federation: dict, name: str) -> None:
    method = create(name)
    federated.run(store, federation, method, dataclasses.replace(TRAIN, rounds=2), MODEL, 0, runtime.resolve("cpu", "fp32", 1),
                  rounds=range(2))
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    restored = create(name)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert _flat(restored.state_dict()) == _flat(method.state_dict())


def _flat(value) -> object:
    """A comparable form of nested state (tensors by value, NaN-aware)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), str(value.dtype), value.flatten().tolist().__repr__())
    if isinstance(value, dict):
        return {k: _flat(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flat(v) for v in value]
    return repr(value)


def test_hidden_labels_do_not_influence_the_staged_fedmlp_workflow(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    """warmup → pseudolabel → teacher through the CLI, on the store and on a copy whose hidden labels are
    permuted (tests/hidden.py): the same detection and the same model bytes, with pseudo-labels selected."""
    partition = tmp_path / "partition.json"
    partition.write_text(json.dumps(federation))
    permuted = write_store(store, permuted_labels(store, federation), tmp_path / "permuted")

    def stages(root: Path, out: Path) -> None:
        common = ["--store", str(root), "--partition", str(partition), "--method", "fedmlp", "--seed", "0",
                  "--train", json.dumps(dataclasses.asdict(TRAIN)), "--model", json.dumps({"width": MODEL.width}),
                  "--method-settings", json.dumps(SETTINGS["fedmlp"])]
        run = ["--run", json.dumps({"dataset": "d", "setting": "s", "method": "fedmlp", "seed": 0})]
        for argv in (["warmup", "--out-model", out / "warmup.pt", "--out-rounds", out / "warmup.csv", "--out-compute", out / "w.json"],
                     ["pseudolabel", "--warmup-model", out / "warmup.pt", "--out-artifact", out / "pseudolabels.json",
                      "--out-summary", out / "pseudolabels.md", "--out-compute", out / "p.json"],
                     ["teacher", "--warmup-model", out / "warmup.pt", "--warmup-rounds", out / "warmup.csv",
                      "--pseudolabels", out / "pseudolabels.json", "--earlier-compute", out / "w.json", out / "p.json",
                      "--out-model", out / "model.pt", "--out-rounds", out / "rounds.csv", *run, "--out-diagnostics",
                      out / "diagnostics.csv", "--out-metrics", out / "metrics.json", "--out-predictions", out / "predictions.csv"]):
            assert main(["--log-level", "ERROR", argv[0], *common, *map(str, argv[1:])]) == 0, argv[0]

    stages(store.root, tmp_path / "a")
    stages(permuted, tmp_path / "b")
    for name in ("warmup.pt", "pseudolabels.json", "model.pt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "rounds.csv").read_text() != (tmp_path / "b" / "rounds.csv").read_text(), "scored on the permuted labels"
    diagnostics = pd.read_csv(tmp_path / "a" / "diagnostics.csv")
    assert (diagnostics["selected_negative"] + diagnostics["selected_positive"]).sum() > 0, "no pseudo-label was selected"
