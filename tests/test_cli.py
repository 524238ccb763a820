"""The ``fedmlp`` console script exits without the interpreter's teardown (fedmlp.cli.entry): what a
command printed or logged must still be complete, and its exit status the command's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import bin_dir

from fedmlp.cli import main
from fedmlp.methods import registry


def test_output_redirected_to_files_is_complete(tmp_path: Path) -> None:
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as stdout, err.open("w") as stderr:  # files: block-buffered, flushed only if the exit does it
        code = subprocess.run([f"{bin_dir()}/fedmlp", "--log-level", "DEBUG", "methods"], stdout=stdout, stderr=stderr).returncode
    assert code == 0
    listed = [line.split()[0] for line in out.read_text().splitlines()]
    assert listed == sorted(registry.specs())


def test_failure_keeps_its_status_and_its_one_line(tmp_path: Path) -> None:
    err = tmp_path / "err.txt"
    with err.open("w") as stderr:
        code = subprocess.run([f"{bin_dir()}/fedmlp", "train", "--store", str(tmp_path / "none"), "--partition", str(tmp_path / "p.json"),
                               "--method", "fedavg-full", "--seed", "0", "--out-model", str(tmp_path / "m.pt"),
                               "--out-rounds", str(tmp_path / "r.csv")], stderr=stderr).returncode
    assert code == 2
    assert err.read_text().startswith(f"fedmlp train: error: {tmp_path / 'none'}")
    assert not (tmp_path / "m.pt").exists()


def test_main_in_process_returns() -> None:
    """main() itself never ends the calling process (tests and other programs call it in-process)."""
    assert main(["methods"]) == 0


def test_a_profiler_still_gets_its_results(tmp_path: Path) -> None:
    """Under cProfile (which writes its file at exit) the console script exits the normal way."""
    stats = tmp_path / "fedmlp.prof"
    code = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(stats), f"{bin_dir()}/fedmlp", "methods"],
                          capture_output=True).returncode
    assert code == 0
    assert stats.stat().st_size > 0


def test_no_command_lists_the_commands_as_a_usage_error(capsys) -> None:
    """``fedmlp`` alone: the full help with every command on stderr and argparse's usage-error status 2."""
    from fedmlp.cli import build_parser

    assert main([]) == 2
    err = capsys.readouterr().err
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert {"train", "report", "dvc-yaml"} <= set(commands) and all(f"    {name} " in err for name in commands)


def test_every_json_option_shows_an_example() -> None:
    """Each option that takes JSON (metavar JSON) says so in its usage and gives a JSON example in its help."""
    from fedmlp.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if a.dest == "command").choices
    options = [(name, action) for name, sub in subparsers.items() for action in sub._actions
               if action.default == "{}" or action.metavar == "JSON"]
    assert len(options) >= 12
    for name, action in options:
        assert action.metavar == "JSON" and "{" in (action.help or "") and "e.g." in action.help, (name, action.option_strings)


def _pack(tmp_path: Path, runs: str) -> subprocess.CompletedProcess:
    return subprocess.run([f"{bin_dir()}/fedmlp", "pack", "--runs", runs], capture_output=True, text=True, cwd=tmp_path)


def test_a_pack_stops_at_its_first_failure_and_names_its_log(tmp_path: Path) -> None:
    """fedmlp pack runs its commands in order, each writing to its own log; the first that fails stops
    the pack with its status, in one line that names the run, its log and the log's last line."""
    import json

    def run(name: str, *extra: str) -> dict:
        return {"argv": ["train", "--store", str(tmp_path / "none"), "--partition", str(tmp_path / "p.json"), "--method", "fedavg-full",
                         "--seed", "0", "--out-model", str(tmp_path / f"{name}.pt"), "--out-rounds", str(tmp_path / f"{name}.csv"), *extra],
                "log": f"logs/{name}.log"}

    result = _pack(tmp_path, json.dumps([run("first"), run("second")]))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("fedmlp pack: error: run 1 of 2, fedmlp train, failed with exit 2 ")
    assert f"(log: logs/first.log: fedmlp train: error: {tmp_path / 'none'}" in result.stderr
    log = (tmp_path / "logs/first.log").read_text().splitlines()
    assert log[0].startswith("fedmlp pack: run 1 of 2: fedmlp train --store ") and log[-1].startswith("fedmlp train: error: ")
    assert not (tmp_path / "logs/second.log").exists() and not (tmp_path / "first.pt").exists()

    result = _pack(tmp_path, json.dumps([run("usage", "--no-such-option")]))  # argparse's own exit is the run's status too
    assert result.returncode == 2 and "run 1 of 1, fedmlp train, failed with exit 2" in result.stderr
    assert "unrecognized arguments: --no-such-option" in (tmp_path / "logs/usage.log").read_text()


def test_a_pack_refuses_what_is_not_a_list_of_training_commands(tmp_path: Path) -> None:
    for runs in ("[]", "{", '[{"argv": ["report", "x"], "log": null}]', '[{"argv": "train", "log": null}]', '[{"argv": ["train"], "log": 3}]'):
        result = _pack(tmp_path, runs)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, runs
        assert result.stderr.startswith("fedmlp pack: error: --runs"), (runs, result.stderr)


def test_a_rerun_pack_continues_its_finished_runs_from_their_last_saved_round(store, federation: dict, tmp_path: Path) -> None:
    """A pack keeps its finished runs' resume states until every run has finished. Snakemake removes
    all outputs of a failed pack, so the rerun trains a finished run's last round again, not the whole
    run, and writes the same bytes; the states go when the pack succeeds."""
    import json

    (tmp_path / "partition.json").write_text(json.dumps(federation))

    def run(name: str, partition: str) -> dict:
        out = tmp_path / name
        return {"argv": ["train", "--store", str(store.root), "--partition", str(tmp_path / partition), "--method", "fedavg-masked",
                         "--seed", "0", "--train", json.dumps({"rounds": 3, "batch_size": 8, "precision": "fp32", "device": "cpu"}),
                         "--model", json.dumps({"width": 4}), "--out-model", str(out / "model.pt"), "--out-rounds", str(out / "rounds.csv"),
                         "--resume-state", str(tmp_path / "resume" / f"{name}.pt")],
                "log": f"logs/{name}.log"}

    result = _pack(tmp_path, json.dumps([run("first", "partition.json"), run("second", "missing.json")]))
    assert result.returncode == 2 and "run 2 of 2" in result.stderr
    written = {name: (tmp_path / "first" / name).read_bytes() for name in ("model.pt", "rounds.csv")}
    assert (tmp_path / "resume/first.pt").is_file()
    for name in written:  # what Snakemake's cleanup of the failed job does
        (tmp_path / "first" / name).unlink()

    result = _pack(tmp_path, json.dumps([run("first", "partition.json"), run("second", "partition.json")]))
    assert result.returncode == 0, result.stderr
    assert "resuming from " in (tmp_path / "logs/first.log").read_text() and " after round 2" in (tmp_path / "logs/first.log").read_text()
    assert {name: (tmp_path / "first" / name).read_bytes() for name in written} == written
    assert (tmp_path / "second/model.pt").is_file() and not list((tmp_path / "resume").iterdir())
