"""Determinism and resumption, through the real `fedmlp` command in subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import bin_dir

from fedmlp.atomic import write_json
from fedmlp.store import ImageStore

TRAIN = json.dumps({"rounds": 8, "batch_size": 8, "precision": "fp32", "device": "cpu"})
MODEL = json.dumps({"width": 4})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def partition_file(federation: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("partition") / "partition.json"
    write_json(path, federation)
    return path


def train_command(store: ImageStore, partition_file: Path, out: Path, seed: int = 0, method: str = "fedavg-masked",
                  settings: str = "{}", resume: Path | None = None) -> list[str]:
    command = [f"{bin_dir()}/fedmlp", "train", "--store", str(store.root), "--partition", str(partition_file),
               "--method", method, "--seed", str(seed), "--train", TRAIN, "--model", MODEL, "--method-settings", settings,
               "--out-model", str(out / "model.pt"), "--out-rounds", str(out / "rounds.csv")]
    return command + (["--resume-state", str(resume)] if resume else [])


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "FEDMLP_PROGRESS": "0"})
    assert result.returncode == 0, result.stderr[-2000:]


def test_same_seed_same_bytes_other_seed_differs(store: ImageStore, partition_file: Path, tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run(train_command(store, partition_file, tmp_path / name, seed=seed))
    assert sha256(tmp_path / "a/model.pt") == sha256(tmp_path / "b/model.pt")
    assert (tmp_path / "a/rounds.csv").read_text().count(",") > 0
    assert sha256(tmp_path / "a/model.pt") != sha256(tmp_path / "c/model.pt")


@pytest.mark.parametrize(("method", "settings"), [("fedavg-masked", "{}"), ("fedmlp", json.dumps({"warmup_rounds": 3}))])
def test_killed_run_resumes_to_the_same_checkpoint(store: ImageStore, partition_file: Path, tmp_path: Path, method: str, settings: str) -> None:
    run(train_command(store, partition_file, tmp_path / "whole", method=method, settings=settings))

    state = tmp_path / "resume" / "state.pt"
    command = train_command(store, partition_file, tmp_path / "killed", method=method, settings=settings, resume=state)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "FEDMLP_PROGRESS": "0"})
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert state.exists() and not (tmp_path / "killed/model.pt").exists()

    run(command)  # the same command again: continues after the last saved round
    assert sha256(tmp_path / "killed/model.pt") == sha256(tmp_path / "whole/model.pt")
    assert (tmp_path / "killed/rounds.csv").read_text() .splitlines()[1:][-1].split(",")[0] == "8"
    assert not state.exists(), "the resume state is removed once the outputs are written"


def test_state_of_another_run_is_ignored(store: ImageStore, partition_file: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.pt"
    import torch

    torch.save({"key": "some other run", "round": 5}, state)
    run(train_command(store, partition_file, tmp_path / "out", resume=state))
    run(train_command(store, partition_file, tmp_path / "reference"))
    assert sha256(tmp_path / "out/model.pt") == sha256(tmp_path / "reference/model.pt")
