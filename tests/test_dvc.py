"""DVC with the real tools on a tiny config: dvc.yaml against the code, metrics and plots, a compiled
library leaves the stages unchanged, push → clone → `make pull` gives every artifact byte for byte,
`make pull` from a remote without the files fails in one line, and `dvc exp run` / `dvc exp show`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, bin_dir

from fedmlp import dvc_views, fingerprint, versioning
from fedmlp.store import VERIFIED

GIT = ("git", "-c", "user.name=t", "-c", "user.email=t@t")
VENV = Path(sys.executable).parent.parent
PARAMS = "config/config.yaml:"  # dvc exp run -S: a parameter of this file (without it, params.yaml)


def run(*command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir()}{os.pathsep}{os.environ['PATH']}", "FEDMLP_PROGRESS": "0"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def sh(*command: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = run(*command, cwd=cwd, timeout=timeout)
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
    """Every output file; a store's verification record is this machine's note, not an output (.dvcignore'd)."""
    return {str(p.relative_to(root)): p.read_bytes() for top in ("resources", "results") for p in (root / top).rglob("*")
            if p.is_file() and p.name not in (".gitignore", VERIFIED)}


def tiny_config(root: Path) -> None:
    config = yaml.safe_load((root / "config/config.yaml").read_text())
    config.update(methods=["fedavg-masked", "fedmlp"], seeds=[0])
    config["synthetic"].update(n_images=60, image_size=48)
    config["preprocess"]["size"] = 24
    config["federation"].update(n_clients=3, annotated_per_client=2)
    config["model"]["width"] = 4
    config["train"].update(rounds=2, batch_size=8, eval_every=1)  # a test score in every round, for the curves
    config["fedmlp"].update(warmup_rounds=1)
    (root / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project with the tiny config, committed, reproduced (`dvc repro`) and pushed to a
    temporary remote; dvc.lock committed."""
    root = tmp_path_factory.mktemp("dvc")
    origin = root / "origin"
    copy_working_tree(origin)
    tiny_config(origin)
    sh("git", "init", "-q", cwd=origin)
    sh("git", "add", "-A", cwd=origin)
    sh(*GIT, "commit", "-qm", "tiny", cwd=origin)
    sh("dvc", "repro", cwd=origin)
    sh("dvc", "remote", "modify", "--local", "local", "url", str(root / "remote"), cwd=origin)
    sh("dvc", "push", cwd=origin)
    sh("git", "add", "dvc.lock", cwd=origin)
    sh(*GIT, "commit", "-qm", "lock", cwd=origin)
    return origin


def clone(origin: Path, target: Path, remote: Path) -> Path:
    sh("git", "clone", "-q", str(origin), str(target), cwd=origin.parent)
    sh("dvc", "remote", "modify", "--local", "local", "url", str(remote), cwd=target)
    return target


def test_dvc_declares_the_artifacts() -> None:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        stages = {stage.name: stage for stage in repo.index.stages}
        outs = {name: sorted(str(out.def_path) for out in stage.outs) for name, stage in stages.items()}
        metrics = [str(out.def_path) for stage in stages.values() for out in stage.outs if out.metric]
    assert outs == {"data": ["resources"], "experiments": ["results/runs"],
                    "report": ["results/figures", "results/metrics.json", "results/plots", "results/report.html", "results/report.md",
                               "results/summary.csv", "results/table.tex"]}
    assert metrics == ["results/metrics.json"]


def test_dvc_yaml_is_derived_from_the_code_fingerprints(tmp_path: Path) -> None:
    sh("fedmlp", "dvc-yaml", "--check", cwd=REPO)
    stages = versioning.document()["stages"]
    deps = {name: set(stage["deps"]) for name, stage in stages.items()}
    # the report depends on what its command imports, not on report.py alone; modules no stage runs are no dependency
    assert {"src/fedmlp/report.py", "src/fedmlp/statistics.py", "src/fedmlp/commands/report.py"} <= deps["report"]
    # every method module is the report's too: it prints their display names
    assert "src/fedmlp/methods/rscfed.py" in deps["experiments"] and "src/fedmlp/methods/rscfed.py" in deps["report"]
    assert "src/fedmlp/methods/rscfed.py" not in deps["data"]
    for unrelated in ("src/fedmlp/bench.py", "src/fedmlp/flower/server.py", "src/fedmlp/commands/federate.py"):
        assert all(unrelated not in d for d in deps.values()), unrelated
    # exactly the files the rules' code fingerprints hash
    training = fingerprint.code_files(*fingerprint.rule_roots("teacher", "fedmlp.methods.fedmlp"))
    assert {f"src/fedmlp/{p.relative_to(fingerprint.SRC).as_posix()}" for p in training} <= deps["experiments"]
    assert "chestxray14" in stages["data"]["params"][0]["config/config.yaml"]

    edited = tmp_path / "dvc.yaml"
    edited.write_text((REPO / "dvc.yaml").read_text().replace("    - src/fedmlp/statistics.py\n", ""))
    result = run("fedmlp", "dvc-yaml", "--check", "--out", str(edited), cwd=REPO)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "stages.report.deps" in result.stderr and "lacks src/fedmlp/statistics.py" in result.stderr


def test_every_rule_and_config_section_belongs_to_a_stage() -> None:
    rules = {m for f in (REPO / "workflow").rglob("*.smk") for m in re.findall(r"^rule (\w+):", f.read_text(), re.M)}
    rules -= {"all", "verify_stores"}  # targets that write no result of their own: no stage, no code param
    staged = {rule for names in versioning.STAGE_RULES.values() for rule in names}
    assert rules == set(fingerprint.RULE_COMMANDS) == staged
    sections = set(yaml.safe_load((REPO / "config/config.yaml").read_text()))
    read = {key for stage in versioning.STAGE_RULES for key in versioning.stage_params(stage)}
    assert sections <= read | set(versioning.NOT_RESULTS), sections - read


def test_metrics_and_plots(origin: Path, tmp_path: Path) -> None:
    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=origin).stdout)
    values = metrics[""]["data"]["results/metrics.json"]["data"]
    for method in ("fedavg-masked", "fedmlp"):
        entry = values["iid-k3-a2"][method]
        assert 0 < entry["mAP_mean"] <= 1 and 0 < entry["AUROC_mean"] <= 1 and entry["n_seeds"] == 1
        assert entry.get("mAP_sd") is None  # one seed: no spread (null in the file; DVC leaves it out)
    curves = (origin / "results/plots/map_per_round.csv").read_text().splitlines()
    assert curves[0] == "setting,method,round,test_mAP,test_AUROC,n_seeds"
    assert [row.split(",")[1:3] for row in curves[1:]] == [["fedavg-masked", "1"], ["fedavg-masked", "2"], ["fedmlp", "1"], ["fedmlp", "2"]]

    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=origin).stdout)
    assert not plots.get("errors"), plots["errors"]
    (curve,) = plots["data"]["results/plots/map_per_round.csv"]
    assert curve["content"]["encoding"]["color"]["field"] == "line"  # the template's one line per method
    assert {row["method"] for row in curve["content"]["data"]["values"]} == {"fedavg-masked", "fedmlp"}
    assert {"results/figures/map_per_round.png", "results/figures/pseudolabels.png"} <= set(plots["data"])
    sh("dvc", "plots", "show", "-o", str(tmp_path / "html"), cwd=origin)
    assert "test mAP per round (mean over seeds)" in (tmp_path / "html" / "index.html").read_text()

    # the offline page: the libraries inline, nothing loaded from the network, the figures beside it
    page = Path(sh("fedmlp", "plots", "--out", str(tmp_path / "offline"), cwd=origin).stdout.strip())
    html = page.read_text()
    assert page == tmp_path / "offline" / "index.html" and "test mAP per round (mean over seeds)" in html
    assert not re.search(r"<script[^>]*\bsrc=", html) and html.count("vegaEmbed('#") == 1
    assert 'var e="5.20.2"' in html  # vega itself, inline
    assert (tmp_path / "offline" / "static").is_dir() and "src=\"static/" in html

    # the table: one row per setting and method
    table = sh("fedmlp", "metrics", cwd=origin).stdout.splitlines()
    assert table[0].split()[:3] == ["setting", "method", "mAP"]
    assert sorted(line.split()[1] for line in table[2:]) == ["fedavg-masked", "fedmlp"]
    assert all(line.startswith("iid-k3-a2 ") for line in table[2:])


def test_plots_show_the_workspace_when_it_differs_from_dvc_lock(origin: Path, tmp_path: Path) -> None:
    """A fresh clone's `make run` (or another CPU's bytes) leaves outputs that dvc.lock does not record;
    the plots are still drawn, from the workspace files, without a `dvc commit`."""
    target = clone(origin, tmp_path / "clone", origin.parent / "remote")
    for top in ("resources", "results"):  # what `make run` leaves, without rerunning it
        sh("cp", "-r", str(origin / top), str(target / top), cwd=target)
    curves = target / "results/plots/map_per_round.csv"
    lines = curves.read_text().splitlines()
    first = lines[1].split(",")
    first[3] = "0.987654"
    curves.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    assert "results/plots" in sh("dvc", "status", "report", cwd=target).stdout  # not what dvc.lock records
    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=target).stdout)
    assert not plots.get("errors"), plots["errors"]
    (curve,) = plots["data"]["results/plots/map_per_round.csv"]
    assert "0.987654" in {row["test_mAP"] for row in curve["content"]["data"]["values"]}
    assert "0.987654" in (Path(sh("fedmlp", "plots", cwd=target).stdout.strip())).read_text()


def test_offline_template_and_metrics_table() -> None:
    template = dvc_views.offline_template()
    assert "{plot_divs}" in template and "{scripts}" not in template  # {scripts} is where DVC adds the CDN tags
    assert not re.search(r"<script[^>]*\bsrc=", template)
    metrics = {"iid-k3-a2": {"fedavg-masked": {"mAP_mean": 0.5, "mAP_sd": 0.01, "AUROC_mean": 0.7, "AUROC_sd": None, "n_seeds": 1},
                             "fedmlp": {"mAP_mean": 0.6, "mAP_sd": 0.02, "AUROC_mean": 0.8, "AUROC_sd": 0.03, "n_seeds": 3}}}
    lines = dvc_views.table(dvc_views.rows(metrics)).splitlines()
    assert {line.split()[1]: line.split()[2:] for line in lines[2:]} == {
        "fedavg-masked": ["0.500", "±", "0.010", "0.700", "1"], "fedmlp": ["0.600", "±", "0.020", "0.800", "±", "0.030", "3"]}
    assert max(map(len, lines)) <= 100


def test_compiling_the_library_changes_no_stage(origin: Path) -> None:
    sh(sys.executable, "-m", "compileall", "-q", "src/fedmlp", cwd=origin)
    assert list((origin / "src/fedmlp").rglob("*.pyc"))
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=origin).stdout


@pytest.mark.slow
def test_push_clone_pull_restores_exact_artifacts(origin: Path, tmp_path: Path) -> None:
    expected = artifacts(origin)
    assert any(name.endswith("model.pt") for name in expected) and "results/summary.csv" in expected
    target = clone(origin, tmp_path / "clone", origin.parent / "remote")
    installed = (VENV / "bin" / ".installed").stat().st_mtime
    pulled = sh("make", "pull", f"VENV={VENV}", cwd=target)
    assert "all outputs present and up to date" in pulled.stdout
    assert (VENV / "bin" / ".installed").stat().st_mtime == installed, "make pull reinstalled an existing environment"
    assert sh("snakemake", "--dry-run", cwd=target).stdout.count("Nothing to be done") == 1
    got = artifacts(target)
    assert got.keys() == expected.keys(), sorted(set(got) ^ set(expected))
    assert [k for k in got if got[k] != expected[k]] == []


def test_pull_from_a_remote_without_the_outputs_says_so(origin: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-remote"
    empty.mkdir()
    target = clone(origin, tmp_path / "clone", empty)
    result = run("make", "--no-print-directory", "pull", f"VENV={VENV}", cwd=target)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("fedmlp")]
    assert len(errors) == 1, result.stderr
    assert f"the DVC remote 'local' at {empty} lacks outputs that dvc.lock records" in errors[0]
    assert "make run" in errors[0] and "dvc remote add -d" in errors[0]
    assert "Checkout failed" not in result.stdout + result.stderr
    assert not (target / "resources").exists() and not (target / "results").exists()


@pytest.mark.slow
def test_experiments_with_their_metrics(origin: Path, tmp_path: Path) -> None:
    target = clone(origin, tmp_path / "clone", origin.parent / "remote")
    sh("make", "pull", f"VENV={VENV}", cwd=target)
    for name, rounds in (("rounds3", 3), ("rounds2", 2)):  # FedMLP's stage 2 takes the rounds after its 1 warm-up round
        sh("dvc", "exp", "run", "-n", name, "-S", f"{PARAMS}train.rounds={rounds}", cwd=target)
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=target).stdout)
    experiments = {e["name"]: e for commit in shown for e in (commit.get("experiments") or [])
                   for e in [e["revs"][0]] if e.get("name")}
    assert {"rounds2", "rounds3"} <= set(experiments), sorted(experiments)
    for name, rounds in (("rounds2", 2), ("rounds3", 3)):
        data = experiments[name]["data"]
        assert data["params"]["config/config.yaml"]["data"]["train"]["rounds"] == rounds
        metric = data["metrics"]["results/metrics.json"]["data"]["iid-k3-a2"]["fedmlp"]
        assert 0 < metric["mAP_mean"] <= 1
    # the same rounds as the committed experiment: the same metrics (DVC leaves out the nulls)
    committed = {setting: {method: {k: v for k, v in entry.items() if v is not None} for method, entry in methods.items()}
                 for setting, methods in json.loads((origin / "results/metrics.json").read_text()).items()}
    assert experiments["rounds2"]["data"]["metrics"]["results/metrics.json"]["data"] == committed
    assert sh("git", "status", "--porcelain", "--", ".snakemake", "resources", "results", cwd=target).stdout == ""
