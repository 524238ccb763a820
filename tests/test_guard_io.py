"""Hostile input, round three (issue 28): commands never destroy their inputs. No output may be an
input (or lie in an input directory); a resume state only ever replaces or removes a file of its own
and sets a bad one aside; ``federate`` replaces nothing before it succeeds. docs/errors.md lists the cases."""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_bad_input import one_error_line
from test_methods_contract import train, weights_equal

from fedmlp.atomic import write_json
from fedmlp.cli import build_parser, main
from fedmlp.errors import FedmlpError
from fedmlp.resume import FORMAT, ResumePoint
from fedmlp.store import ImageStore


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"


@pytest.fixture
def work(store: ImageStore, federation: dict, tmp_path: Path) -> Path:
    """A copy of the small store, its partition and split, and stand-ins for a trained run's files."""
    shutil.copytree(store.root, tmp_path / "store")
    write_json(tmp_path / "partition.json", federation, now=True)
    write_json(tmp_path / "split.json", {"train": [], "test": []}, now=True)
    for name in ("model.pt", "rounds.csv", "metrics.json"):
        (tmp_path / name).write_text(f"the user's {name}\n")
    (tmp_path / "raw").mkdir()
    return tmp_path


TRAIN_ARGS = ["--store", "{w}/store", "--partition", "{w}/partition.json", "--method", "fedavg-partial", "--seed", "0"]
EVALUATE_ARGS = ["evaluate", "--store", "{w}/store", "--partition", "{w}/partition.json", "--model", "{w}/model.pt",
                 "--rounds", "{w}/rounds.csv"]


@pytest.mark.parametrize(("argv", "option", "victim"), [
    (["train", *TRAIN_ARGS, "--out-model", "{w}/m.pt", "--out-rounds", "{w}/store/labels.csv"], "--out-rounds", "store/labels.csv"),
    (["train", *TRAIN_ARGS, "--out-model", "{w}/partition.json", "--out-rounds", "{w}/r.csv"], "--out-model", "partition.json"),
    (["train", *TRAIN_ARGS, "--out-model", "{w}/m.pt", "--out-rounds", "{w}/r.csv", "--resume-state", "{w}/store/images.npy"],
     "--resume-state", "store/images.npy"),
    (["split", "--store", "{w}/store", "--out", "{w}/store/manifest.json"], "--out", "store/manifest.json"),
    (["partition", "--store", "{w}/store", "--split", "{w}/split.json", "--out", "{w}/split.json"], "--out", "split.json"),
    ([*EVALUATE_ARGS, "--out-metrics", "{w}/model.pt", "--out-predictions", "{w}/p.csv"], "--out-metrics", "model.pt"),
    ([*EVALUATE_ARGS, "--out-metrics", "{w}/m.json", "--out-predictions", "{w}/rounds.csv"], "--out-predictions", "rounds.csv"),
    (["federate", *TRAIN_ARGS, "--out-model", "{w}/m.pt", "--out-rounds", "{w}/r.csv", "--work-dir", "{w}/store"], "--work-dir", "store"),
    (["ingest", "--raw", "{w}/raw", "--out", "{w}"], "--out", "raw"),  # a store directory replaced whole, holding the raw data
    (["report", "{w}/metrics.json", "--summary", "{w}/metrics.json", "--report", "{w}/r.md", "--figure", "{w}/f.png"],
     "--summary", "metrics.json"),
    ([*EVALUATE_ARGS, "--out-metrics", "{w}/same.json", "--out-predictions", "{w}/./same.json"], "--out-predictions", "same.json"),
])
def test_no_output_overwrites_an_input(work: Path, argv: list[str], option: str, victim: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: digest(p) for p in work.rglob("*")}
    assert main([a.format(w=work) for a in argv]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"error: {option} " in line and ("would overwrite the input" in line or "the same file as" in line), line
    assert {p: digest(p) for p in work.rglob("*")} == before, "nothing is written, nothing removed"


def test_a_hard_link_to_an_input_is_the_input(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "link.json").hardlink_to(work / "split.json")
    assert main(["partition", "--store", str(work / "store"), "--split", str(work / "split.json"), "--out", str(work / "link.json")]) == 2
    assert "would overwrite the input --split" in capsys.readouterr().err


def test_every_path_option_is_declared_an_input_or_an_output() -> None:
    """The check covers every subcommand: each option that takes a path says which it is."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        paths = {a.option_strings[0] if a.option_strings else a.dest for a in parser._actions if a.type is Path}
        declared = parser.get_default("path_options")
        assert paths == (set(declared.inputs) | set(declared.outputs) | set(declared.places) if declared else set()), name


# --- resume states -------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"not a torch file", None])
def test_a_resume_state_path_naming_a_foreign_file_stops_the_run(store: ImageStore, federation: dict, tmp_path: Path,
                                                                  content: bytes | None) -> None:
    path = tmp_path / "state.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)  # a torch file, but not ours
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(FedmlpError, match="exists and is not a fedmlp resume state; refusing to overwrite or remove it"):
        train(store, federation, "fedavg-partial", resume=ResumePoint(path, key="run"))
    assert path.read_bytes() == before


def _saved_after_round_1(store: ImageStore, federation: dict, path: Path) -> dict:
    class Stop(Exception):
        pass

    def stop(round_number, clients, states):
        if round_number == 2:
            raise Stop
        return []

    with pytest.raises(Stop):
        train(store, federation, "fedavg-partial", resume=ResumePoint(path, key="run"), on_round_end=stop)
    return torch.load(path, weights_only=True)


def _nan(state: dict) -> None:
    name = next(iter(state["global"]))
    state["global"][name] = torch.full_like(state["global"][name], float("nan"))


def _reshape(state: dict) -> None:
    name = next(k for k, v in state["global"].items() if v.ndim > 1)
    state["global"][name] = torch.zeros(3, 3)


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda s: s.update(round=99), "saved after round 99, outside this stage's rounds 0 to 2"),
    (lambda s: s.update(round=-5), "saved after round -5"),
    (lambda s: s.update(round=2), "1 recorded rounds for a state saved after round 2"),
    (lambda s: s.pop("history"), "field 'history' missing"),
    (lambda s: s.pop("round_rows"), "field 'round_rows' or 'gates' missing"),
    (lambda s: s["clients"].pop(), "2 client states, the partition has 3 clients"),
    (_nan, "holds NaN or infinite values"),
    (_reshape, "not a tensor of shape"),
])
def test_a_bad_resume_state_of_the_run_is_set_aside_and_the_run_starts_afresh(
        store: ImageStore, federation: dict, tmp_path: Path, damage, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.pt"
    state = _saved_after_round_1(store, federation, path)
    assert state["format"] == FORMAT
    damage(state)
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="fedmlp.resume"):
        result = train(store, federation, "fedavg-partial", resume=ResumePoint(path, key="run"))
    assert reason in caplog.text and "set aside as" in caplog.text
    assert (tmp_path / "state.pt.bad").is_file(), "set aside, not deleted"
    assert [r.round for r in result.history] == [1, 2, 3]
    assert weights_equal(result.model, train(store, federation, "fedavg-partial").model), "as a fresh run"


def test_a_non_finite_model_is_never_saved_into_the_resume_state(tmp_path: Path) -> None:
    point = ResumePoint(tmp_path / "state.pt", key="run")
    with pytest.raises(FedmlpError, match=r"^round 4: the global model's weights hold NaN or infinite values \(fc.weight\)"):
        point.save({"round": 4, "global": {"fc.weight": torch.tensor([1.0, float("inf")])}})
    assert not point.path.exists()


def test_a_resume_state_of_another_run_is_replaced(store: ImageStore, federation: dict, tmp_path: Path) -> None:
    """Ours, with another key: ignored (as before), then overwritten by this run's state, and removed by clear()."""
    path = tmp_path / "state.pt"
    _saved_after_round_1(store, federation, path)
    point = ResumePoint(path, key="other")
    result = train(store, federation, "fedavg-partial", resume=point)
    assert [r.round for r in result.history] == [1, 2, 3]
    assert torch.load(path, weights_only=True)["key"] == "other"
    point.clear()
    assert not path.exists()


# --- federate ------------------------------------------------------------------------------------------


def test_federate_replaces_out_federation_only_when_it_succeeds(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "federation.json").write_text("the user's federation.json\n")
    (work / "a-file").write_text("")
    code = main(["federate", *[a.format(w=work) for a in TRAIN_ARGS], "--out-model", str(work / "m.pt"), "--out-rounds", str(work / "r.csv"),
                 "--out-federation", str(work / "federation.json"), "--work-dir", str(work / "a-file")])
    assert code == 2 and "a-file" in one_error_line(capsys.readouterr().err)
    assert (work / "federation.json").read_text() == "the user's federation.json\n"


# --- verified pulls ------------------------------------------------------------------------------------

MAKE_OUTPUTS = "mkdir -p out/runs && echo weights > out/model.pt && echo '{\"mAP\": 0.5}' > out/metrics.json && echo w2 > out/runs/model.pt\n"


@pytest.fixture(scope="module")
def dvc_origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DVC project (two file outputs, a directory output) pushed to a local remote."""
    from test_dvc import GIT, sh

    root = tmp_path_factory.mktemp("dvc-verify") / "origin"
    root.mkdir()
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    (root / "make.sh").write_text(MAKE_OUTPUTS)
    (root / "dvc.yaml").write_text("stages:\n  make:\n    cmd: sh make.sh\n    outs: [out/model.pt, out/metrics.json, out/runs]\n")
    sh("dvc", "repro", "-q", cwd=root)
    sh("dvc", "remote", "add", "-d", "local", str(root.parent / "remote"), cwd=root)
    sh("dvc", "push", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh(*GIT, "commit", "-qm", "outputs", cwd=root)
    return root


@pytest.mark.parametrize(("output", "name"), [("out/model.pt", "out/model.pt"), ("out/metrics.json", "out/metrics.json"),
                                              ("out/runs", "out/runs/model.pt")])
def test_a_flipped_bit_in_the_remote_is_named_as_a_corrupted_object(dvc_origin: Path, tmp_path: Path, output: str, name: str) -> None:
    from test_dvc import run, sh

    remote = tmp_path / "remote"
    shutil.copytree(dvc_origin.parent / "remote", remote)
    expected = hashlib.md5((dvc_origin / name).read_bytes()).hexdigest()
    damaged = remote / "files" / "md5" / expected[:2] / expected[2:]
    damaged.chmod(0o644)
    data = bytearray(damaged.read_bytes())
    data[0] ^= 1
    damaged.write_bytes(bytes(data))
    target = tmp_path / "clone"
    sh("git", "clone", "-q", str(dvc_origin), str(target), cwd=tmp_path)
    sh("dvc", "remote", "modify", "--local", "local", "url", str(remote), cwd=target)
    result = run(f"{Path(sys.executable).parent}/fedmlp", "dvc-fetch", cwd=target)
    assert result.returncode == 2
    line = one_error_line(result)
    assert f"holds a corrupted object: output {output}, file {name}: md5 {hashlib.md5(bytes(data)).hexdigest()}, " \
           f"dvc.lock records {expected}" in line, line
    assert not (target / "out" / "model.pt").exists(), "the workspace is untouched"
    assert not [p for p in (target / ".dvc" / "cache").rglob("*") if p.is_file() and p.name == expected[2:]], "not kept in the cache"
