"""profiles/slurm on a real SLURM cluster (`scripts/slurm-one-node start` makes one on this host).

Every job of a small workflow goes through sbatch, its results equal a local run's byte for byte, and
a training job cancelled with scancel continues on the rerun from its last saved round. Without a
cluster these tests skip, unless FEDMLP_REQUIRE_SLURM=1 (as .ci/run sets), where they fail.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, bin_dir

CONFIG = {
    "methods": ["fedavg-masked", "fedmlp"],
    "seeds": [0],
    "synthetic": {"n_images": 60, "image_size": 48},
    "preprocess": {"size": 24},
    "federation": {"n_clients": 3, "annotated_per_client": 2},
    "model": {"width": 4},
    "train": {"rounds": 2, "batch_size": 8},
    "fedmlp": {"warmup_rounds": 1, "tau0": {"fixed": 0.3}, "tau1": {"fixed": 0.3}},
}
SLURM_JOBS = {"synthesize": 1, "ingest": 1, "split": 1, "partition": 1, "train": 1, "warmup": 1,
              "pseudolabel": 1, "teacher": 1, "report": 1}  # `all` runs locally
GPU_RULES = {"train", "warmup", "pseudolabel", "teacher"}
LONG_ROUNDS = 150  # about 10 s of training here: time enough for scancel to land mid-training
TRAIN_RUN = "synthetic-ich/header24/draw0/iid-k3-a2/fedavg-masked/seed0"
PROFILE = ["--profile", str(REPO / "profiles" / "slurm"), "--workflow-profile", "none"]
# Only for a one-node test cluster: no accounting (status from squeue, no account), a first status
# check after 2 s instead of 40, the logs of successful jobs kept (they hold the job IDs), 2 CPUs.
TEST_CLUSTER = ["--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2",
                "--slurm-keep-successful-logs", "--max-threads", "2"]
SLURM = [*PROFILE, *TEST_CLUSTER]

pytestmark = pytest.mark.slow


def command(workdir: Path, config: dict, *args: str) -> tuple[list[str], dict[str, str]]:
    """A snakemake command line and its environment (the venv's commands on the PATH, as jobs need)."""
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{bin_dir()}{os.pathsep}{os.environ['PATH']}", "FEDMLP_PROGRESS": "0"}
    return [f"{bin_dir()}/snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config_path), "--cores", "2", *args], env


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    cmd, env = command(workdir, config, *args)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)


def tail(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def cluster_problem() -> str | None:
    """Why this host cannot run the SLURM tests, or None."""
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM commands (sinfo, sbatch) on the PATH"
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return f"no SLURM cluster answers ({(result.stderr.strip().splitlines() or ['sinfo failed'])[-1]})"
    if not re.search(r"idle|mixed|allocated", result.stdout):
        return f"no SLURM node takes jobs (sinfo states: {' '.join(result.stdout.split())})"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = cluster_problem()
    if problem is None:
        return
    hint = "start a one-node cluster with `scripts/slurm-one-node start` (as root)"
    if os.environ.get("FEDMLP_REQUIRE_SLURM") == "1":
        pytest.fail(f"FEDMLP_REQUIRE_SLURM=1 but {problem}; {hint}", pytrace=False)
    pytest.skip(f"{problem}; {hint}")


def slurm_jobs(workdir: Path) -> list[tuple[str, str]]:
    """(rule, SLURM job ID) of every submitted job, from the plugin's logs
    (.snakemake/slurm_logs/rule_<rule>/[<wildcards>/]<job ID>.log)."""
    logs = workdir / ".snakemake" / "slurm_logs"
    return sorted((path.relative_to(logs).parts[0].removeprefix("rule_"), path.stem) for path in logs.rglob("*.log"))


def scheduler_view(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Job ID → (state, comment) as slurmctld reports them (finished jobs stay for MinJobAge)."""
    result = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%k"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return {job: (state, comment) for job, state, comment in (line.split("|") for line in result.stdout.splitlines())}


def result_files(workdir: Path) -> dict[str, bytes]:
    results = workdir / "results"
    return {str(p.relative_to(results)): p.read_bytes() for p in sorted(results.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def slurm_run(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("slurm")
    result = snakemake(workdir, CONFIG, *SLURM)
    assert result.returncode == 0, tail(result)
    return workdir


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("local")
    result = snakemake(workdir, CONFIG)  # the local profile, profiles/default
    assert result.returncode == 0, tail(result)
    return workdir


@pytest.mark.slurm
def test_every_job_ran_as_a_slurm_job(slurm_run: Path) -> None:
    jobs = slurm_jobs(slurm_run)
    assert Counter(rule for rule, _ in jobs) == SLURM_JOBS
    seen = scheduler_view([job for _, job in jobs])
    for rule, job in jobs:
        state, comment = seen[job]
        assert state == "COMPLETED" and comment.startswith(f"rule_{rule}"), (rule, job, state, comment)
    for rule in SLURM_JOBS:
        assert list((slurm_run / "logs" / rule).rglob("*.log")), f"no log for rule {rule}"


@pytest.mark.slurm
def test_results_equal_a_local_run(slurm_run: Path, local_run: Path) -> None:
    on_slurm, local = result_files(slurm_run), result_files(local_run)
    assert "runs/" + TRAIN_RUN + "/model.pt" in on_slurm and "summary.csv" in on_slurm
    assert on_slurm.keys() == local.keys()
    assert [name for name in on_slurm if on_slurm[name] != local[name]] == []


@pytest.mark.slurm
def test_cancelled_training_resumes_on_rerun(slurm_run: Path, local_run: Path, tmp_path: Path) -> None:
    """scancel mid-training, then the same command: the new job continues after the last saved round
    and ends with the checkpoint of an uninterrupted run."""
    long = {**CONFIG, "train": {**CONFIG["train"], "rounds": LONG_ROUNDS}}  # one round budget: FedMLP's 1 + LONG_ROUNDS - 1
    reference, workdir = tmp_path / "local", tmp_path / "slurm"
    for source, copy in ((local_run, reference), (slurm_run, workdir)):
        # the data and the other runs as they are (copies keep mtimes); this run not trained yet
        shutil.copytree(source, copy, symlinks=True)
        shutil.rmtree(copy / "results/runs" / TRAIN_RUN)
        shutil.rmtree(copy / "results/figures")
        (copy / "results/summary.csv").unlink()
        (copy / "results/report.md").unlink()
    result = snakemake(reference, long)
    assert result.returncode == 0, tail(result)

    cmd, env = command(workdir, long, *SLURM, "--retries", "0")  # the profile's retry would hide the failure
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = workdir / "resume" / "train" / f"{TRAIN_RUN}.pt"
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.exists(), "the training job saved no state"
    running = subprocess.run(["squeue", "-h", "-t", "running", "-o", "%i|%k"], capture_output=True, text=True, timeout=30)
    train_jobs = [line.split("|")[0] for line in running.stdout.splitlines() if line.split("|")[1].startswith("rule_train_")]
    assert len(train_jobs) == 1, running.stdout
    subprocess.run(["scancel", train_jobs[0]], check=True, timeout=30)
    assert process.wait(timeout=300) != 0, "snakemake did not report the cancelled job"
    assert scheduler_view(train_jobs)[train_jobs[0]][0] == "CANCELLED"
    saved = torch.load(state, weights_only=True)["round"]
    assert 0 < saved < LONG_ROUNDS and not (workdir / "results/runs" / TRAIN_RUN / "model.pt").exists()

    result = snakemake(workdir, long, *SLURM)
    assert result.returncode == 0, tail(result)
    log = (workdir / "logs/train" / f"{TRAIN_RUN}.log").read_text()
    resumed = re.search(r"resuming from \S+ after round (\d+)", log)
    assert resumed and saved <= int(resumed[1]) < LONG_ROUNDS, log[-2000:]
    assert Counter(rule for rule, _ in slurm_jobs(workdir))["train"] == 3  # first run, cancelled, resumed
    for name in ("model.pt", "rounds.csv", "metrics.json"):
        run = Path("results/runs") / TRAIN_RUN / name
        assert (workdir / run).read_bytes() == (reference / run).read_bytes(), name
    assert not state.exists(), "the resume state is removed once the outputs are written"


def test_gpu_rules_ask_for_a_gpu_and_the_others_do_not(tmp_path: Path) -> None:
    """With train.device cuda (a GPU cluster) the training and evaluation rules declare one GPU, the
    CPU rules none, and every job has a runtime and memory from the profile (a dry run: no cluster)."""
    config = {**CONFIG, "train": {**CONFIG["train"], "device": "cuda"}}
    result = snakemake(tmp_path, config, *PROFILE, "--dry-run")
    assert result.returncode == 0, tail(result)
    jobs = re.findall(r"^rule (\w+):\n((?:    .*\n)*)", result.stdout, re.M)
    assert Counter(rule for rule, _ in jobs) == {**SLURM_JOBS, "all": 1}
    for rule, block in jobs:
        if rule == "all":
            continue
        resources = re.search(r"^    resources: (.*)$", block, re.M)[1]
        declared = dict(item.split("=", 1) for item in resources.split(", "))
        assert declared.get("gpu") == ("1" if rule in GPU_RULES else None), (rule, resources)
        assert {"runtime", "mem_mb"} <= declared.keys(), (rule, resources)
        if rule in ("train", "warmup", "teacher"):  # sized from the config: rounds × minutes_per_round + 30
            rounds = {"train": config["train"]["rounds"], "warmup": config["fedmlp"]["warmup_rounds"],
                      "teacher": config["train"]["rounds"] - config["fedmlp"]["warmup_rounds"]}[rule]
            assert declared["runtime"] == str(math.ceil(rounds * 2.0) + 30), (rule, resources)
