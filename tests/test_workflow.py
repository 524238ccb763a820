"""The real Snakemake workflow on a tiny config, run inside the test suite."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, bin_dir

TINY = {
    "methods": ["fedavg-full", "fedavg-partial", "fedavg-masked", "fedmlp", "fedmlp-official"],
    "seeds": [0],
    "synthetic": {"n_images": 60, "image_size": 48},
    "preprocess": {"size": 24},
    "federation": {"n_clients": 3, "annotated_per_client": [2, 3]},
    "model": {"width": 4},
    "train": {"rounds": 2, "batch_size": 8},
    "fedmlp": {"warmup_rounds": 1, "tau0": {"fixed": 0.3}, "tau1": {"fixed": 0.3}},
}
AFTER_PARTITION = {"train": 6, "warmup": 2, "pseudolabel": 4, "teacher": 4, "report": 1, "all": 1}


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{bin_dir()}{os.pathsep}{os.environ['PATH']}", "FEDMLP_PROGRESS": "0"}
    command = [f"{bin_dir()}/snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(config_path), "--cores", "2", "--workflow-profile", str(REPO / "profiles" / "default"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def planned_rules(output: str) -> dict[str, int]:
    """Rule → job count from a dry run's 'Job stats' table."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def planned_commands(output: str, command: str) -> list[list[str]]:
    """The fedmlp commands of one kind (train, teacher, ...) that a dry run with --printshellcmds
    shows, as arguments: training jobs run theirs through ``fedmlp pack --runs JSON``."""
    packs = re.findall(r"fedmlp pack --runs '([^']+)'", output)
    return [run["argv"] for pack in packs for run in json.loads(pack) if run["argv"][0] == command]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("workflow")
    result = snakemake(workdir, TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_end_to_end_outputs(tiny_run: Path) -> None:
    summary = pd.read_csv(tiny_run / "results" / "summary.csv")
    assert list(summary.columns) == ["dataset", "setting", "method", "seed", "metric", "value"]
    assert set(summary["setting"]) == {"iid-k3-a2", "iid-k3-a3"}
    assert set(summary["method"]) == set(TINY["methods"])
    assert set(summary["metric"]) == {"mAP", "AUROC", "BACC", "F1", "precision", "recall", "hamming_loss"}
    assert len(summary) == 2 * 5 * 1 * 7 and summary["value"].notna().all()
    report = (tiny_run / "results" / "report.md").read_text()
    assert all(m in report for m in TINY["methods"]) and "Per-class test AUROC" in report
    assert "mAP gap closed" in report and "Pseudo-labels (diagnostics" in report
    assert "## Across settings" in report and "### synthetic-ich · iid-k3: test mAP" in report  # two settings of one family
    assert "\\multicolumn{2}{c}{mAP}" in (tiny_run / "results" / "table.tex").read_text()
    for figure in ("map_per_round.png", "pseudolabels.png", "map_by_annotated.png"):
        assert (tiny_run / "results" / "figures" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for rule in ("synthesize", "ingest", "split", "partition", "train", "warmup", "pseudolabel", "teacher", "report"):
        assert list((tiny_run / "logs" / rule).rglob("*.log")), f"no log for rule {rule}"
    run = tiny_run / "results/runs/synthetic-ich/header24/draw0/iid-k3-a2/fedavg-masked/seed0"
    assert {p.name for p in run.iterdir()} >= {"model.pt", "rounds.csv", "metrics.json", "predictions.csv"}
    staged = tiny_run / "results/runs/synthetic-ich/header24/draw0/iid-k3-a2/fedmlp-official/seed0"
    assert {p.name for p in staged.iterdir()} >= {"pseudolabels.json", "pseudolabels.md", "model.pt", "rounds.csv", "diagnostics.csv"}
    rounds = pd.read_csv(staged / "rounds.csv")
    assert rounds["round"].tolist() == [1, 2]  # warm-up round, then the stage-2 round
    diagnostics = pd.read_csv(staged / "diagnostics.csv")
    assert set(diagnostics["class"]) == {"epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"}
    assert (diagnostics["round"] == 2).all() and diagnostics["precision_negative"].between(0, 1).any()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fedavg-masked", "fedmlp"])
def test_training_jobs_score_as_fedmlp_evaluate_does(tiny_run: Path, tmp_path: Path, method: str) -> None:
    """The training jobs score their final checkpoint themselves; `fedmlp evaluate` on the same files
    writes the same predictions and metrics (one job start-up fewer per run, the same numbers), less
    what only training knows (its compute and gate log)."""
    setting = "synthetic-ich/header24/draw0/iid-k3-a2"
    run = tiny_run / f"results/runs/{setting}/{method}/seed0"
    identity = {"dataset": "synthetic-ich", "setting": "iid-k3-a2", "method": method, "seed": 0}
    command = [f"{bin_dir()}/fedmlp", "evaluate", "--store", str(tiny_run / "resources/synthetic-ich/draw0/store/header24"),
               "--partition", str(tiny_run / f"results/runs/{setting}/partition.json"), "--model", str(run / "model.pt"),
               "--rounds", str(run / "rounds.csv"), "--run", json.dumps(identity, sort_keys=True, separators=(",", ":")),
               "--device", "cpu", "--out-metrics", str(tmp_path / "metrics.json"), "--out-predictions", str(tmp_path / "predictions.csv")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "predictions.csv").read_bytes() == (run / "predictions.csv").read_bytes()
    trained = json.loads((run / "metrics.json").read_text())
    assert trained.pop("compute")["cost"] > 0  # what only training knows: its counted passes and gate rates
    trained.pop("gates", None)
    assert json.loads((tmp_path / "metrics.json").read_text()) == trained


@pytest.mark.slow
def test_second_run_does_nothing(tiny_run: Path) -> None:
    result = snakemake(tiny_run, TINY, "--dry-run")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout


@pytest.mark.slow
def test_rerunning_ingest_rebuilds_the_store(tmp_path: Path) -> None:
    """A real rerun (not a dry run) of a stage whose outputs exist, as after a code change."""
    assert snakemake(tmp_path, TINY, "--until", "ingest").returncode == 0
    store = tmp_path / "resources/synthetic-ich/draw0/store/header24"
    before = (store / "images.npy").read_bytes()
    result = snakemake(tmp_path, TINY, "--forcerun", "ingest", "--until", "ingest")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (store / "images.npy").read_bytes() == before and (store / "candidates.txt").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"train": {**TINY["train"], "rounds": 3}},  # every method's rounds, FedMLP's stage 2 the ones after its warm-up
         {"train": 6, "warmup": 2, "pseudolabel": 4, "teacher": 4, "report": 1, "all": 1}),
        ({"federation": {**TINY["federation"], "seed": 5}}, {"partition": 2, **AFTER_PARTITION}),
        ({"preprocess": {"size": 24, "windowing": "header"}}, {}),  # same values spelled out: nothing
        # draw 1 of the data; each training job packs seeds 0 and 1 (pack_seeds), so seed 0 trains again in it
        ({"seeds": [0, 1]}, {"synthesize": 1, "ingest": 1, "split": 1, "partition": 2, **AFTER_PARTITION}),
        ({"seeds": [0, 1], "replicates": "training"},  # the layout without draws: every job again, both seeds in each
         {"synthesize": 1, "ingest": 1, "split": 1, "partition": 2, **AFTER_PARTITION}),
        ({"pack_seeds": False}, {}),  # a pack of one seed is the job of that seed: nothing to rerun
        ({"seeds": [0, 1], "pack_seeds": False}, {"synthesize": 1, "ingest": 1, "split": 1, "partition": 2, **AFTER_PARTITION}),  # seed 1's
        ({"preprocess": {"size": 20}}, {"ingest": 1, "split": 1, "partition": 2, **AFTER_PARTITION}),
        ({"federation": {**TINY["federation"], "annotated_per_client": [3, 4]}},
         {"partition": 1, "train": 3, "warmup": 1, "pseudolabel": 2, "teacher": 2, "report": 1, "all": 1}),
        ({"fedmlp": {**TINY["fedmlp"], "lambda_cr": 0.5}}, {"teacher": 4, "report": 1, "all": 1}),
        ({"fedmlp": {**TINY["fedmlp"], "stage2_views": 1}}, {"teacher": 4, "report": 1, "all": 1}),
        ({"fedmlp": {**TINY["fedmlp"], "tau1": {"max": 0.5}}}, {"pseudolabel": 4, "teacher": 4, "report": 1, "all": 1}),
        ({"fedmlp": {**TINY["fedmlp"], "lambda_dis": 0.5}}, {"warmup": 2, "pseudolabel": 4, "teacher": 4, "report": 1, "all": 1}),
    ],
)
def test_config_changes_rerun_only_what_depends_on_them(tiny_run: Path, change: dict, expected: dict) -> None:
    result = snakemake(tiny_run, {**TINY, **change}, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_rules(result.stdout) == expected


@pytest.mark.slow
def test_each_seed_draws_its_own_data_and_training_replicates_share_one(tmp_path: Path) -> None:
    """replicates: data (the default): seeds 0 and 1 have their own synthetic images, split and
    partition, and the run of seed s trains on draw s and says seed s (what the report pairs methods
    by). replicates: training: one draw for both seeds, at the paths of before the key, and it is draw 0."""
    two = {**TINY, "seeds": [0, 1]}
    data, training = tmp_path / "data", tmp_path / "training"
    for workdir, replicates in ((data, "data"), (training, "training")):
        workdir.mkdir()
        result = snakemake(workdir, {**two, "replicates": replicates}, "--until", "partition")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    labels = [(data / f"resources/synthetic-ich/draw{s}/raw/stage_2_train.csv").read_bytes() for s in (0, 1)]
    draws = [data / f"results/runs/synthetic-ich/header24/draw{s}" for s in (0, 1)]
    assert labels[0] != labels[1]
    for name in ("split.json", "iid-k3-a2/partition.json", "iid-k3-a3/partition.json"):
        assert (draws[0] / name).read_bytes() != (draws[1] / name).read_bytes(), name
    planned = snakemake(data, two, "--dry-run", "--printshellcmds").stdout
    trains = [argv for argv in planned_commands(planned, "train") if option(argv, "--method") == "fedavg-masked"]
    assert sorted(option(argv, "--seed") for argv in trains) == ["0", "0", "1", "1"]  # two settings
    for argv in trains:
        seed = option(argv, "--seed")
        assert option(argv, "--store") == f"resources/synthetic-ich/draw{seed}/store/header24"
        assert option(argv, "--partition").startswith(f"results/runs/synthetic-ich/header24/draw{seed}/")
        assert json.loads(option(argv, "--run"))["seed"] == int(seed)

    assert not [path for top in ("resources", "results", "logs") for path in (training / top).rglob("draw*")]
    assert (training / "resources/synthetic-ich/raw/stage_2_train.csv").read_bytes() == labels[0]
    for name in ("split.json", "iid-k3-a2/partition.json", "iid-k3-a3/partition.json"):
        assert (training / "results/runs/synthetic-ich/header24" / name).read_bytes() == (draws[0] / name).read_bytes(), name
    planned = snakemake(training, {**two, "replicates": "training"}, "--dry-run", "--printshellcmds").stdout
    trains = [argv for argv in planned_commands(planned, "train") if option(argv, "--method") == "fedavg-masked"]
    assert sorted(option(argv, "--seed") for argv in trains) == ["0", "0", "1", "1"]
    assert {option(argv, "--store") for argv in trains} == {"resources/synthetic-ich/store/header24"}
    assert {option(argv, "--partition") for argv in trains} == {f"results/runs/synthetic-ich/header24/iid-k3-a{n}/partition.json" for n in (2, 3)}


@pytest.mark.slow
def test_packed_runs_write_the_bytes_of_separate_runs(tmp_path: Path) -> None:
    """pack_seeds: true (the default) trains both seeds of a method in one job and one process, false
    a job per seed: every file of every run is the same, byte for byte, and each run has its own log."""
    config = {**TINY, "methods": ["fedavg-masked", "fedmlp"], "seeds": [0, 1], "federation": {**TINY["federation"], "annotated_per_client": 2}}
    runs = {}
    for pack in (True, False):
        workdir = tmp_path / f"pack-{pack}"
        workdir.mkdir()
        result = snakemake(workdir, {**config, "pack_seeds": pack})
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        jobs = sorted(str(path.relative_to(workdir / "benchmarks")) for path in (workdir / "benchmarks").rglob("*.tsv"))
        assert len(jobs) == (3 if pack else 6), jobs  # fedavg-masked, fedmlp's warm-up and stage 2: a job each, or per seed
        root = workdir / "results/runs"
        runs[pack] = {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
                      if path.is_file() and path.suffix in {".pt", ".csv", ".json", ".md", ".tsv"}}
        for rule, method in (("train", "fedavg-masked"), ("warmup", "fedmlp-warmup"), ("teacher", "fedmlp")):
            for seed in (0, 1):
                log = (workdir / f"logs/{rule}/synthetic-ich/header24/draw{seed}/iid-k3-a2/{method}/seed{seed}.log").read_text()
                assert f"fedmlp {rule} --store resources/synthetic-ich/draw{seed}/store/header24" in log.splitlines()[0]
    assert len(runs[True]) > 20 and {name for name in runs[True] if "/seed1/" in name}
    assert runs[True].keys() == runs[False].keys()
    assert [name for name in runs[True] if runs[True][name] != runs[False][name]] == []


@pytest.mark.slow
def test_a_training_killed_after_a_config_change_is_rerun(tiny_run: Path, tmp_path: Path) -> None:
    """After a config change, the trainings ran, except one that was killed after Snakemake had removed
    its old checkpoint, and Snakemake stopped. The next run must train it, although its old metrics
    and the report exist (Snakemake does not recreate a missing intermediate file on its own)."""
    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    changed = {**TINY, "train": {**TINY["train"], "lr": 0.01}}
    assert snakemake(workdir, changed, "--until", "train").returncode == 0
    run = workdir / "results/runs/synthetic-ich/header24/draw0/iid-k3-a2/fedavg-masked/seed0"
    for output in ("model.pt", "rounds.csv", "metrics.json", "predictions.csv"):  # what Snakemake removes before running the job
        (run / output).unlink()
    result = snakemake(workdir, changed, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert planned_rules(result.stdout).get("train") == 1 and "fedavg-masked/seed0/model.pt" in result.stdout


@pytest.mark.slow
def test_ich_dataset_reads_a_kaggle_download(tiny_run: Path) -> None:
    """dataset: ich plans ingest from ich.root (here the synthetic files, which are in the same layout),
    or a download when there is no root; a root without the label file fails before any work."""
    raw = tiny_run / "resources" / "synthetic-ich" / "draw0" / "raw"
    result = snakemake(tiny_run, {**TINY, "dataset": "ich", "ich": {"root": str(raw)}}, "--dry-run")
    assert result.returncode == 0, result.stderr[-2000:]
    planned = planned_rules(result.stdout)
    assert "synthesize" not in planned and planned["ingest"] == 1 and planned["train"] == 6 and planned["teacher"] == 4
    assert f"--raw {raw}" in result.stdout
    result = snakemake(tiny_run, {**TINY, "dataset": "ich"}, "--dry-run")  # no root: download first
    assert result.returncode == 0 and planned_rules(result.stdout)["download"] == 1
    result = snakemake(tiny_run, {**TINY, "dataset": "ich", "ich": {"root": str(tiny_run / "nowhere")}}, "--dry-run")
    assert result.returncode != 0 and "config key 'ich.root'" in result.stdout + result.stderr


@pytest.mark.parametrize("paper_config", ["ich", "chestxray14"])
def test_paper_setups_plan_from_download_to_report(tmp_path: Path, paper_config: str) -> None:
    """Without credentials or data, the paper's setups plan the whole DAG and say nothing alarming."""
    config = yaml.safe_load((REPO / "config" / f"{paper_config}.yaml").read_text())
    result = snakemake(tmp_path, config, "--dry-run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    planned = planned_rules(result.stdout)
    assert planned == {"download": 1, "ingest": 1, "split": 1, "partition": 1, "train": 3, "warmup": 1,
                       "pseudolabel": 3, "teacher": 3, "report": 1, "all": 1}
    assert not re.search(r"warn|error|exception|deprecat", result.stdout + result.stderr, re.I)


def test_missing_rate_sweep_plans_every_method_setting_and_seed(tmp_path: Path) -> None:
    """config/missing-rates.yaml (on the schema's defaults, which are config/config.yaml): a final
    training or teacher job for every registered method × the 6 settings × seeds 0-4, and its report
    under results/missing-rates/, beside the default's and not over it."""
    from fedmlp.methods import registry

    config = yaml.safe_load((REPO / "config" / "missing-rates.yaml").read_text())
    assert config["methods"] == "all", "the sweep runs every registered method"
    result = snakemake(tmp_path, config, "--summary")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()[1:] if line.count("\t") >= 5]
    run = re.compile(r"results/runs/synthetic-ich/header32/draw(?P<draw>\d+)/(?P<setting>[^/]+)/(?P<method>[^/]+)/seed(?P<seed>\d+)/metrics\.json")
    matches = [(m, rule) for path, _, rule, *_ in rows if (m := run.fullmatch(path))]
    assert all(m["draw"] == m["seed"] for m, _ in matches), "seed s trains on draw s of the data"
    planned = sorted((m["setting"], m["method"], int(m["seed"]), rule) for m, rule in matches)
    settings = ["iid-k5-a1", "iid-k5-a2", "iid-k5-a3", "iid-k5-a4", "dir0.5-k5-a1", "dir0.5-k5-a2"]
    staged = {name for name, spec in registry.specs().items() if spec.staged}
    assert planned == sorted((setting, method, seed, "teacher" if method in staged else "train")
                             for setting in settings for method in registry.names() for seed in range(5))
    reported = {path for path, _, rule, *_ in rows if rule == "report"}
    assert {"results/missing-rates/report.md", "results/missing-rates/table.tex", "results/missing-rates/figures/map_by_annotated.png"} <= reported
    assert all(path.startswith("results/missing-rates/") for path in reported)


@pytest.mark.slow
def test_lint_is_clean(tiny_run: Path) -> None:
    result = snakemake(tiny_run, TINY, "--lint")
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr


def test_schema_violations_name_the_key(tmp_path: Path) -> None:
    result = snakemake(tmp_path, {**TINY, "federation": {"n_clients": "five"}}, "--dry-run")
    assert result.returncode != 0
    assert "n_clients" in result.stderr + result.stdout and "five" in result.stderr + result.stdout
    result = snakemake(tmp_path, {**TINY, "federation": {"n_clients": 2, "annotated_per_client": 1}}, "--dry-run")
    assert result.returncode != 0 and "federation.annotated_per_client" in result.stdout + result.stderr
    result = snakemake(tmp_path, {**TINY, "methods": ["fedavg-fulll"]}, "--dry-run")
    assert result.returncode != 0 and "fedavg-fulll" in result.stderr + result.stdout
    result = snakemake(tmp_path, {**TINY, "seeds": [0, 1], "split": {"seed": 2**32 - 1}}, "--dry-run")  # replicates: data adds the seed
    assert result.returncode != 0 and "config key 'split.seed'" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_html_report_embeds_the_results(tiny_run: Path, tmp_path: Path) -> None:
    """`snakemake --report report.html` is one self-contained file: the summary as a table, the Markdown
    report's text, a description of this run's config, and both figures as the bytes the workflow wrote."""
    html_path = tmp_path / "report.html"
    result = snakemake(tiny_run, TINY, "--report", str(html_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    html = html_path.read_text()
    for method in TINY["methods"]:
        assert f"<td>{method}</td>" in html, method  # summary.csv, rendered as a table in its caption
    assert ">metric</th>" in html and "<td>mAP</td>" in html and "<td>iid-k3-a3</td>" in html
    assert "Per-class test AUROC" in html and "mAP gap closed" in html  # report.md's text
    assert "Federation: 3 clients" in html  # the workflow description, from the run's config
    page = (tiny_run / "results" / "report.html").read_text()  # fedmlp report --html: the first page includes it
    assert page.count("<table>") >= 2 and all(f"<td>{method}</td>" in page for method in TINY["methods"])
    assert "fedmlp-report" in html and "Test mAP per round" in html  # the results page, on the report's front page
    embedded = {m[1]: base64.b64decode(m[2]) for m in re.finditer(r"data:image/png;[^,]*filename=([^;,]+);base64,([A-Za-z0-9+/=]+)", html)}
    for figure in ("map_per_round.png", "pseudolabels.png"):
        assert embedded.get(figure) == (tiny_run / "results" / "figures" / figure).read_bytes(), figure


def module_snakefile(workflow: Path, configfile: str | None) -> str:
    """Another project's Snakefile that takes every rule of ours (the Snakemake workflow catalog's way)."""
    read = f'configfile: "{configfile}"\n\n\n' if configfile else ""
    return f'{read}module fedmlp:\n    snakefile:\n        "{workflow}"\n    config:\n        config\n\n\nuse rule * from fedmlp\n'


def snakemake_in(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake as a user runs it in their own directory: its Snakefile, no profile of ours."""
    env = {**os.environ, "PATH": f"{bin_dir()}{os.pathsep}{os.environ['PATH']}", "FEDMLP_PROGRESS": "0"}
    return subprocess.run([f"{bin_dir()}/snakemake", "--cores", "2", *args], check=False, cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_workflow_runs_as_a_module_of_another_snakefile(tmp_path: Path) -> None:
    """A Snakefile in another directory uses our rules (`module` with its own config, `use rule *`): the
    schema and the captions are found beside our files, its config (with the schema's defaults) decides
    the run, and the results land in its directory."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "Snakefile").write_text(module_snakefile(REPO / "workflow" / "Snakefile", "config.yaml"))
    config = {**TINY, "methods": ["fedavg-partial", "fedmlp"], "federation": {"n_clients": 3, "annotated_per_client": 2}}
    (project / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake_in(project, "--dry-run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    planned = planned_rules(result.stdout)
    assert (planned["train"], planned["warmup"], planned["pseudolabel"], planned["teacher"], planned["all"]) == (1, 1, 1, 1, 1)
    result = snakemake_in(project)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = pd.read_csv(project / "results" / "summary.csv")
    assert set(summary["method"]) == {"fedavg-partial", "fedmlp"} and set(summary["setting"]) == {"iid-k3-a2"}
    result = snakemake_in(project, "--report", "report.html")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    html = (project / "report.html").read_text()
    assert "<td>fedavg-partial</td>" in html and "FedMLP and the methods it is compared with" in html

    defaults = tmp_path / "defaults"  # no config at all: the schema's defaults, the default experiment
    defaults.mkdir()
    (defaults / "Snakefile").write_text(module_snakefile(REPO / "workflow" / "Snakefile", None))
    result = snakemake_in(defaults, "--dry-run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    from fedmlp.methods import registry

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["methods"]["default"] == "all"
    for method in registry.names():
        assert f"/iid-k5-a1/{method}/seed2/" in result.stdout, method

