"""Live per-round metrics (DVCLive) from the real `fedmlp` training commands: one row per round as the
rounds happen (test and validation scores), every round once after a kill and resume, and no DVC or
Git activity around them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import bin_dir

from fedmlp.atomic import write_json
from fedmlp.store import ImageStore

ROUNDS = 6
TRAIN = json.dumps({"rounds": ROUNDS, "batch_size": 8, "precision": "fp32", "device": "cpu"})
MODEL = json.dumps({"width": 4})
ENV = {**os.environ, "FEDMLP_PROGRESS": "0"}


@pytest.fixture(scope="module")
def partition_file(validated_federation: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("partition") / "partition.json"
    write_json(path, validated_federation)
    return path


def train(store: ImageStore, partition_file: Path, out: Path, *extra: str) -> list[str]:
    return [f"{bin_dir()}/fedmlp", "train", "--store", str(store.root), "--partition", str(partition_file), "--method", "fedavg-masked",
            "--seed", "0", "--train", TRAIN, "--model", MODEL, "--out-model", str(out / "model.pt"),
            "--out-rounds", str(out / "rounds.csv"), "--live", str(out / "live"), *extra]


def rows(live: Path, metric: str) -> list[list[str]]:
    lines = (live / "plots" / "metrics" / f"{metric}.tsv").read_text().splitlines()
    assert lines[0] == f"step\t{metric}"
    return [line.split("\t") for line in lines[1:]]


def check_live_matches_rounds(out: Path) -> None:
    lines = (out / "rounds.csv").read_text().splitlines()
    assert lines[0] == "round,train_loss,test_mAP,test_AUROC,val_mAP,val_AUROC"
    expected = [dict(zip(lines[0].split(","), map(float, line.split(",")))) for line in lines[1:]]
    for metric in ("train_loss", "test_mAP", "test_AUROC", "val_mAP", "val_AUROC"):
        got = rows(out / "live", metric)
        assert [r[0] for r in got] == [str(i) for i in range(1, ROUNDS + 1)], metric  # step = round, each once
        assert [float(r[1]) for r in got] == pytest.approx([e[metric] for e in expected], rel=1e-12), metric
    summary = json.loads((out / "live" / "metrics.json").read_text())
    assert summary["step"] == ROUNDS and summary["val_mAP"] == pytest.approx(expected[-1]["val_mAP"])


def test_live_metrics_one_row_per_round_and_no_repository_activity(store: ImageStore, partition_file: Path, tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout

    def run(env: dict) -> None:
        result = subprocess.run(train(store, partition_file, out), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        check_live_matches_rounds(out)
        assert not (out / "live" / "dvc.yaml").exists() and not (tmp_path / "dvc.yaml").exists()

    out = tmp_path / "run"
    (out / "live").mkdir(parents=True)
    (out / "live" / "notes.txt").write_text("mine")  # a file DVCLive did not write stays
    git("init", "-q")
    run(ENV)  # in a Git repository without DVC: DVCLive left alone would initialise DVC here
    assert not (tmp_path / ".dvc").exists()
    assert (out / "live" / "notes.txt").read_text() == "mine"

    # inside `dvc exp run` (its variables set, in a DVC repository): no Git staging, no experiment saved,
    # and the files start anew (a rerun after a config change, say), DVCLIVE_RESUME or not
    subprocess.run([f"{bin_dir()}/dvc", "init", "-q"], cwd=tmp_path, check=True)
    git("commit", "-qm", "dvc init")
    head = git("rev-parse", "HEAD").strip()
    run({**ENV, "DVC_ROOT": str(tmp_path), "DVC_EXP_BASELINE_REV": head, "DVC_EXP_NAME": "e", "DVCLIVE_RESUME": "true"})
    assert git("status", "--porcelain", "--untracked-files=no") == ""
    assert git("for-each-ref").count("\n") == 1  # only the branch: no refs/exps


def test_killed_and_resumed_run_has_every_round_once(store: ImageStore, partition_file: Path, tmp_path: Path) -> None:
    out, state = tmp_path / "run", tmp_path / "resume" / "state.pt"
    command = train(store, partition_file, out, "--resume-state", str(state))
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert rows(out / "live", "train_loss"), "nothing was written live before the kill"
    # Snakemake removes the outputs of an incomplete job, the live directory with them; the rerun rebuilds it
    subprocess.run(["rm", "-r", str(out / "live")], check=True)
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    check_live_matches_rounds(out)


def test_live_logging_is_imported_only_when_asked_for() -> None:
    code = "import sys, fedmlp.cli, fedmlp.commands.training; print('dvclive' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
