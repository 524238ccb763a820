"""DVC round trip with the real tools: run a tiny config, push to a temporary remote, clone the
repository elsewhere, `make pull`: nothing left to run and every artifact byte-identical."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, bin_dir


def sh(*command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir()}{os.pathsep}{os.environ['PATH']}", "FEDMLP_PROGRESS": "0"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def copy_working_tree(target: Path) -> None:
    """The project's files as a new user's clone would have them (tracked and not ignored)."""
    files = sh("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())


def artifacts(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for top in ("resources", "results") for p in (root / top).rglob("*")
            if p.is_file() and p.name != ".gitignore"}


def test_dvc_declares_the_artifacts() -> None:
    listing = sh("dvc", "stage", "list", cwd=REPO).stdout
    assert re.search(r"^data\s+Outputs resources$", listing, re.M)
    assert re.search(r"^experiments\s+Outputs results/runs$", listing, re.M)
    assert re.search(r"^report\s+Outputs results/summary\.csv, results/report\.md, results/figures$", listing, re.M)


@pytest.mark.slow
def test_push_clone_pull_restores_exact_artifacts(tmp_path: Path) -> None:
    origin, clone, remote = tmp_path / "origin", tmp_path / "clone", tmp_path / "remote"
    copy_working_tree(origin)
    config = yaml.safe_load((origin / "config/config.yaml").read_text())
    config.update(methods=["fedavg-masked", "fedmlp"], seeds=[0])
    config["synthetic"].update(n_images=60, image_size=48)
    config["preprocess"]["size"] = 24
    config["federation"].update(n_clients=3, annotated_per_client=2)
    config["model"]["width"] = 4
    config["train"].update(rounds=2, batch_size=8)
    config["fedmlp"].update(warmup_rounds=1, rounds=1)
    (origin / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    sh("git", "init", "-q", cwd=origin)
    sh("git", "add", "-A", cwd=origin)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny", cwd=origin)

    sh("dvc", "repro", cwd=origin)
    sh("dvc", "remote", "modify", "--local", "local", "url", str(remote), cwd=origin)
    sh("dvc", "push", cwd=origin)
    sh("git", "add", "dvc.lock", cwd=origin)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock", cwd=origin)
    expected = artifacts(origin)
    assert any(name.endswith("model.pt") for name in expected) and "results/summary.csv" in expected

    sh("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    sh("dvc", "remote", "modify", "--local", "local", "url", str(remote), cwd=clone)
    venv = Path(sys.executable).parent.parent
    installed = (venv / "bin" / ".installed").stat().st_mtime
    pulled = sh("make", "pull", f"VENV={venv}", cwd=clone)
    assert "all outputs present and up to date" in pulled.stdout
    assert (venv / "bin" / ".installed").stat().st_mtime == installed, "make pull reinstalled an existing environment"
    assert sh("snakemake", "--dry-run", cwd=clone).stdout.count("Nothing to be done") == 1
    got = artifacts(clone)
    assert got.keys() == expected.keys(), sorted(set(got) ^ set(expected))
    assert [k for k in got if got[k] != expected[k]] == []
