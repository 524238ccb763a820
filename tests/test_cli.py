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
