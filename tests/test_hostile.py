"""Hostile and careless input, round two (issue 15), one table of cases per class: values that reach
shell commands, loggers and file modes; targets that are not ours; silent garbage (non-finite
numbers, integers written as floats, repeated YAML keys, round budgets, hand-made partitions and
splits, damaged stores, degenerate DICOMs, special files). The fuzz test over every subcommand is
tests/test_fuzz.py; damaged stores are in tests/test_bad_input.py. docs/errors.md lists every case."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from conftest import REPO, bin_dir
from pydicom.data import get_testdata_file
from test_bad_config import default_config
from test_bad_input import HEAD_CT, label_rows, one_error_line
from test_workflow import TINY, snakemake

from fedmlp.cli import main
from fedmlp.config import FederationConfig, PreprocessConfig, TrainConfig, from_json
from fedmlp.errors import FedmlpError
from fedmlp.sources import rsna
from fedmlp.sources.synthetic import SyntheticConfig
from fedmlp.store import ImageStore
from fedmlp.workflow_config import check_combinations, check_config_files, check_schema

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def fedmlp(*args: str, umask: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDMLP_PROGRESS": "0"}
    return subprocess.run([f"{bin_dir()}/fedmlp", "--log-level", "ERROR", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


# --- security: quoting, loggers, file modes -------------------------------------------------------------

HOSTILE_NAME = "a b; touch PWNED $(touch PWNED) `touch PWNED` 'q\" &"


@pytest.mark.slow
def test_workflow_quotes_every_value_that_reaches_a_shell(raw_dataset: Path, tmp_path: Path) -> None:
    """The real workflow, every rule from ingest to report, run from a working directory and on a
    dataset root whose names hold spaces and shell syntax: it works, and no injected command runs."""
    root = tmp_path / f"raw {HOSTILE_NAME}"
    shutil.copytree(raw_dataset, root)
    workdir = tmp_path / f"work {HOSTILE_NAME}"
    workdir.mkdir()
    config = {**TINY, "dataset": "ich", "ich": {"root": str(root)}, "methods": ["fedavg-masked", "fedmlp"],
              "preprocess": {"size": 16}, "federation": {"n_clients": 2, "annotated_per_client": 3}}
    result = snakemake(workdir, config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (workdir / "results" / "report.md").is_file()
    assert "fedmlp" in (workdir / "results" / "summary.csv").read_text()
    assert not list(tmp_path.rglob("PWNED")) and not (REPO / "PWNED").exists(), "an injected command ran"


def test_debug_logging_keeps_other_libraries_at_their_level(store: ImageStore, tmp_path: Path) -> None:
    """--log-level DEBUG is fedmlp's: another library's debug messages (which may hold credentials) stay out."""
    code = (
        "import logging, sys; from fedmlp.cli import main; "
        "from fedmlp.commands import tools; tools.cmd_methods = lambda args: (logging.getLogger('urllib3').debug('SECRET-TOKEN'), "
        "logging.getLogger('fedmlp.x').debug('fedmlp-debug')); sys.exit(main(['--log-level', 'DEBUG', 'methods']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fedmlp-debug" in result.stderr and "SECRET-TOKEN" not in result.stderr
    code = code.replace("'DEBUG', 'methods'", "'DEBUG', '--library-log-level', 'DEBUG', 'methods'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "SECRET-TOKEN" in result.stderr, "unless asked"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_respect_the_umask(raw_dataset: Path, store: ImageStore, tmp_path: Path, umask: int) -> None:
    """Files and directories get what an ordinary open/mkdir gives under the user's umask, not the
    0600/0700 of temporary files, so colleagues on a shared cluster can read results."""
    assert fedmlp("split", "--store", str(store.root), "--out", str(tmp_path / "runs" / "split.json"), umask=umask).returncode == 0
    result = fedmlp("ingest", "--raw", str(raw_dataset), "--out", str(tmp_path / "store"), "--settings", '{"size": 16}', umask=umask)
    assert result.returncode == 0, result.stderr
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    for path in [tmp_path / "runs" / "split.json", tmp_path / "store.skipped.csv", *(tmp_path / "store").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    for path in (tmp_path / "runs", tmp_path / "store"):
        assert stat.S_IMODE(path.stat().st_mode) == dir_mode, path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--seed", "x"], "fedmlp train: error: argument --seed: 'x' is not an integer"),
        (["train", "--store", "s"], "fedmlp train: error: the following arguments are required:"),
        (["split", "--store", "s", "--out", "o", "--bogus"], "fedmlp: error: unrecognized arguments: --bogus"),
        (["nosuchcommand"], "fedmlp: error: argument command: invalid choice: 'nosuchcommand'"),
        (["evaluate", "--threads", "0"], "fedmlp evaluate: error: argument --threads: 0 is out of range (expected 1 to 1024)"),
        (["warmup", "--seed", str(2**32)], "argument --seed: 4294967296 is out of range (expected 0 to 4294967295)"),
        (["train", "--seed", "-1"], "argument --seed: -1 is out of range"),
        (["ingest", "--raw", "r", "--out", "o", "--workers", "0"], "argument --workers: 0 is out of range"),
        (["bench", "--stage", "1", "--batch-size", "0"], "argument --batch-size: 0 is out of range"),
        (["bench", "--stage", "1", "--size", "-5"], "argument --size: -5 is out of range"),
        (["dicom2png", "--windowing", "header", "--size", "0", "a", "b"], "argument --size: 0 is out of range"),
        (["paper-split", "chestxray14", "--data-entry", "x", "--out", "o", "--clients", "0"], "argument --clients: 0 is out of range"),
        (["teacher", "--resume-every", "0"], "argument --resume-every: 0 is less than 1"),
        (["--log-level", "LOUD", "methods"], "fedmlp: error: argument --log-level: invalid choice: 'LOUD'"),
    ],
)
def test_bad_arguments_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line, line


# --- never lose a user's data -----------------------------------------------------------------------------

def _user_dataset(root: Path) -> Path:
    """What a user's own RSNA download looks like: no fedmlp marker."""
    (root / rsna.IMAGE_DIR).mkdir(parents=True)
    shutil.copy(HEAD_CT, root / rsna.IMAGE_DIR / "ID_000000a01.dcm")
    (root / rsna.LABEL_FILE).write_text("\n".join(["ID,Label", *label_rows(["ID_000000a01"])]) + "\n")
    return root


SYNTH = json.dumps({"n_images": 12, "image_size": 32})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_user_dataset, "was not written by 'fedmlp synth'; refusing to write a synthetic dataset into it"),
        (lambda root: (root.mkdir(), (root / "notes.txt").write_text("mine")), "holds 'notes.txt' and was not written by 'fedmlp synth'"),
        (lambda root: root.write_text("a file"), "exists and is not a directory"),
    ],
    ids=["a real dataset", "a folder with a file", "a file"],
)
def test_synth_refuses_a_target_that_is_not_its_own(tmp_path: Path, make, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "raw"
    make(target)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["synth", "--out", str(target), "--settings", SYNTH]) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before, "nothing touched"


def test_synth_replaces_its_own_dataset_whole(tmp_path: Path) -> None:
    """A smaller rerun over its own output leaves no DICOM of the earlier, larger dataset behind."""
    assert main(["synth", "--out", str(tmp_path / "raw"), "--settings", json.dumps({"n_images": 20, "image_size": 32})]) == 0
    assert main(["synth", "--out", str(tmp_path / "raw"), "--settings", SYNTH]) == 0
    assert len(list((tmp_path / "raw" / rsna.IMAGE_DIR).iterdir())) == 12


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda out: (out.mkdir(), (out / "labels.csv").write_text("my own table")),
         "is not an image store written by 'fedmlp ingest' (it holds 'labels.csv'); refusing to overwrite it"),
        (lambda out: (out.mkdir(), (out / "images.npy").write_bytes(b"mine"), (out / "manifest.json").write_text('{"mine": 1}')),
         "is not an image store written by 'fedmlp ingest'"),
        (lambda out: (out.mkdir(), (out / ".fedmlp-store").write_text(""), (out / "notes.txt").write_text("mine")),
         "holds 'notes.txt', which is not part of an image store"),
        (lambda out: out.write_text("a file"), "exists and is not a directory"),
    ],
    ids=["a file named like a store file", "store names, foreign manifest", "our marker, a foreign file", "a file"],
)
def test_ingest_replaces_only_its_own_stores(raw_dataset: Path, tmp_path: Path, make, message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store"
    make(out)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert main(["ingest", "--raw", str(raw_dataset), "--out", str(out), "--settings", '{"size": 16}']) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_ingest_replaces_what_snakemake_left_of_its_store(raw_dataset: Path, tmp_path: Path) -> None:
    """Snakemake removes the declared outputs before a rerun; the marker it leaves says the folder is ours."""
    out = tmp_path / "store"
    assert main(["ingest", "--raw", str(raw_dataset), "--out", str(out), "--settings", '{"size": 16}']) == 0
    for name in ("images.npy", "labels.csv", "manifest.json", "candidates.txt"):
        (out / name).unlink()
    assert main(["ingest", "--raw", str(raw_dataset), "--out", str(out), "--settings", '{"size": 16}']) == 0
    assert ImageStore.open(out).images.shape == (80, 1, 16, 16)


def test_dicom2png_never_overwrites_what_is_not_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dicom = tmp_path / "slice.dcm"
    shutil.copy(HEAD_CT, dicom)
    (tmp_path / "notes.txt").write_text("mine")
    cases = [(dicom, "would overwrite the input INPUT"), (tmp_path / "notes.txt", "exists and is not a PNG"),
             (tmp_path, "exists and is not a regular file")]
    for output, message in cases:
        assert main(["dicom2png", "--windowing", "header", str(dicom), str(output)]) == 2
        assert message in one_error_line(capsys.readouterr().err)
    assert dicom.read_bytes() == HEAD_CT.read_bytes() and (tmp_path / "notes.txt").read_text() == "mine"
    assert main(["dicom2png", "--windowing", "header", str(dicom), str(tmp_path / "a.png")]) == 0
    assert main(["dicom2png", "--windowing", "bsb", str(dicom), str(tmp_path / "a.png")]) == 0, "a PNG may be replaced"


HOLD = "import sys, time; from pathlib import Path; from fedmlp.atomic import exclusive\n" \
       "with exclusive(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)"


@pytest.mark.parametrize("command", ["ingest", "split", "synth"])
def test_a_second_writer_fails_at_once(raw_dataset: Path, store: ImageStore, tmp_path: Path, command: str) -> None:
    """While another process writes a target, a second writer of it fails with one line and leaves
    the first one's files alone (a real concurrent ingest: tests/test_interruption.py)."""
    target = tmp_path / {"ingest": "store", "split": "split.json", "synth": "raw"}[command]
    target.parent.mkdir(exist_ok=True)
    live = target.with_name(f".{target.name}.abcd1234.tmp")
    live.write_text("the other process's work")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = {"ingest": ["ingest", "--raw", str(raw_dataset), "--out", str(target), "--settings", '{"size": 16}'],
                "split": ["split", "--store", str(store.root), "--out", str(target)],
                "synth": ["synth", "--out", str(target), "--settings", SYNTH]}[command]
        result = fedmlp(*args)
        assert result.returncode == 2
        assert f"{target}: another process is writing it right now" in one_error_line(result)
        assert live.read_text() == "the other process's work"
    finally:
        holder.kill()
        holder.wait()


# --- no silent garbage: config values ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"train": {"lr": float("nan")}}, "config key 'train.lr': nan is not a finite number"),
        ({"train": {"lr": float("inf")}}, "config key 'train.lr': inf is not a finite number"),
        ({"preprocess": {"max_skipped_fraction": float("nan")}}, "config key 'preprocess.max_skipped_fraction': nan is not a finite number"),
        ({"cluster": {"minutes_per_round": float("inf")}}, "config key 'cluster.minutes_per_round': inf is not a finite number"),
        ({"synthetic": {"prevalence": {"epidural": float("-inf")}}}, "config key 'synthetic.prevalence.epidural': -inf is not a finite"),
        ({"fedmlp": {"tau1": {"max": float("nan")}}}, "config key 'fedmlp.tau1.max': nan is not a finite number"),
        ({"federation": {"dirichlet_alpha": float("nan")}}, "config key 'federation.dirichlet_alpha': nan is not a finite number"),
        ({"preprocess": {"size": 64.0}}, "config key 'preprocess.size': 64.0 is not an integer (write 64)"),
        ({"seeds": [1.0]}, "config key 'seeds[0]': 1.0 is not an integer (write 1)"),
        ({"train": {"rounds": 20.0}}, "config key 'train.rounds': 20.0 is not an integer (write 20)"),
        ({"seeds": [2**32]}, "config key 'seeds[0]': 4294967296 is greater than the maximum of 4294967295"),
        ({"split": {"seed": 2**40}}, "config key 'split.seed': 1099511627776 is greater than the maximum of 4294967295"),
        ({"federation": {"seed": 2**32}}, "config key 'federation.seed': 4294967296 is greater than the maximum"),
        ({"synthetic": {"seed": -1}}, "config key 'synthetic.seed': -1 is less than the minimum of 0"),
        ({"cluster": {"minutes_per_round": 100000}}, "config key 'cluster.minutes_per_round': 100000 is greater than the maximum of 1440"),
        ({"train": {"rounds": 10**9}}, "config key 'train.rounds': 1000000000 is greater than the maximum of 100000"),
        ({"train": {"local_epochs": 10**6}}, "config key 'train.local_epochs': 1000000 is greater than the maximum of 1000"),
        ({"model": {"width": 2**31}}, "config key 'model.width': 2147483648 is greater than the maximum of 1024"),
    ],
)
def test_non_finite_float_integers_and_unbounded_values_are_refused(config: dict, message: str) -> None:
    with pytest.raises(FedmlpError) as caught:
        check_schema(copy.deepcopy(config), SCHEMA)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("cls", "section", "text", "message"),
    [
        (TrainConfig, "train", '{"lr": NaN}', "config key 'train.lr': nan is not a finite number"),
        (TrainConfig, "train", '{"lr": Infinity}', "config key 'train.lr': inf is not a finite number"),
        (TrainConfig, "train", '{"rounds": 0}', "config key 'train.rounds': 0 is less than the minimum of 1"),
        (TrainConfig, "train", '{"batch_size": 0}', "config key 'train.batch_size': 0 is less than the minimum of 2"),
        (TrainConfig, "train", '{"rounds": 20.0}', "config key 'train.rounds': expected an integer, got 20.0"),
        (TrainConfig, "train", '{"augment": {"scale_min": -1}}', "config key 'train.augment.scale_min': -1.0 is less than or equal to"),
        (PreprocessConfig, "preprocess", '{"size": 64.0}', "config key 'preprocess.size': expected an integer, got 64.0"),
        (PreprocessConfig, "preprocess", '{"size": 0}', "config key 'preprocess.size': 0 is less than the minimum of 16"),
        (SyntheticConfig, "synthetic", '{"seed": 4294967296}', "config key 'synthetic.seed': 4294967296 is greater than the maximum"),
        (SyntheticConfig, "synthetic", '{"prevalence": {"epidural": 2}}', "config key 'synthetic.prevalence.epidural': 2.0 is greater than"),
        (FederationConfig, "federation", '{"n_clients": -3}', "config key 'federation.n_clients': -3 is less than the minimum of 1"),
        (TrainConfig, "train", '{"rounds": ' + "9" * 5000 + "}", "settings for 'train' are not valid JSON"),
        (TrainConfig, "train", "[" * 100000, "settings for 'train' are not valid JSON"),
    ],
)
def test_stage_settings_refuse_what_the_schema_refuses(cls, section: str, text: str, message: str) -> None:
    """The same values through a stage's --settings JSON (a stage run by hand): refused at parse time."""
    with pytest.raises(FedmlpError) as caught:
        from_json(cls, text, section)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"train": {"rounds": 8}}, "config key 'fedmlp.warmup_rounds': 8 leaves no stage-2 round of train.rounds 8"),
        ({"fedmlp": {"warmup_rounds": 25}}, "config key 'fedmlp.warmup_rounds': 25 leaves no stage-2 round of train.rounds 20"),
        ({"methods": ["fedavg-full", "fedmlp-official"], "fedmlp": {"warmup_rounds": 20}}, "set it below 20"),
    ],
)
def test_one_round_budget_per_experiment(sections: dict, message: str) -> None:
    with pytest.raises(FedmlpError) as caught:
        check_combinations(default_config(**copy.deepcopy(sections)))
    assert message in str(caught.value)


def test_the_removed_stage2_key_is_refused_on_the_command_line_too() -> None:
    """fedmlp.rounds (stage 2's length, now train.rounds − fedmlp.warmup_rounds) in --method-settings:
    one line naming the key and what replaced it, not a generic unknown key."""
    from fedmlp.methods import registry

    with pytest.raises(FedmlpError, match=r"^config key 'fedmlp.rounds': replaced by train.rounds: stage 2 runs train.rounds − "):
        registry.create("fedmlp-fixed", {"warmup_rounds": 8, "rounds": 12})


def test_fedmlp_trains_train_rounds_in_all() -> None:
    from fedmlp.methods import registry

    method = registry.create("fedmlp", {"warmup_rounds": 8})
    assert method.first_stage2_round == 8 and method.n_rounds(TrainConfig(rounds=20)) == 20
    with pytest.raises(FedmlpError, match=r"^config key 'fedmlp.warmup_rounds': 8 leaves no stage-2 round of train.rounds 8 "):
        method.n_rounds(TrainConfig(rounds=8))


def test_the_round_budget_binds_only_with_fedmlp_listed() -> None:
    check_combinations(default_config(methods=["fedavg-full", "fedavg-masked"], train={"rounds": 30}))


DUPLICATES = [
    ("train:\n  rounds: 20\nfedmlp:\n  rounds: 12\ntrain:\n  lr: 0.1\n", "config.yaml:5: key 'train' appears twice in one mapping (first on line 1)"),
    ("train: {rounds: 20, rounds: 30}\n", "config.yaml:1: key 'rounds' appears twice"),
    ("seeds: [0]\nmethods: [fedavg-full]\nseeds: [1]\n", "config.yaml:3: key 'seeds' appears twice"),
]


@pytest.mark.parametrize(("text", "message"), DUPLICATES)
def test_repeated_yaml_keys_are_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(FedmlpError) as caught:
        check_config_files([tmp_path / "config.yaml"])
    assert message in str(caught.value)


def test_repeated_yaml_keys_stop_a_real_dry_run(tmp_path: Path) -> None:
    """Through Snakemake, which reads --configfile itself: the workflow refuses before any work."""
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump(TINY) + "train:\n  rounds: 2\n  lr: 0.5\n")
    result = snakemake(tmp_path, TINY, "--dry-run", "--configfile", str(config))
    assert result.returncode != 0
    assert f"{config}:" in result.stdout + result.stderr and "key 'train' appears twice" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def test_a_round_budget_without_stage2_or_the_removed_key_stops_a_real_dry_run(tmp_path: Path) -> None:
    result = snakemake(tmp_path, {**TINY, "fedmlp": {**TINY["fedmlp"], "warmup_rounds": 2}}, "--dry-run")  # train.rounds 2
    assert result.returncode != 0 and "config key 'fedmlp.warmup_rounds': 2 leaves no stage-2 round" in result.stdout + result.stderr
    result = snakemake(tmp_path, {**TINY, "fedmlp": {**TINY["fedmlp"], "rounds": 1}}, "--dry-run")
    assert result.returncode != 0 and "config key 'fedmlp.rounds': replaced by train.rounds" in result.stdout + result.stderr


def test_dataclass_bounds_match_the_workflow_schema() -> None:
    """from_dict enforces the bounds given in config.py; they must be the schema's, key by key."""
    import dataclasses

    from fedmlp import config as sections
    from fedmlp.schema import BOUNDS

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]
    pairs = [("preprocess", sections.PreprocessConfig), ("split", sections.SplitConfig),
             ("federation", sections.FederationConfig), ("model", sections.ModelConfig), ("train", sections.TrainConfig)]
    pairs.append(("train.augment", sections.AugmentConfig))
    for section, cls in pairs:
        properties = schema
        for part in section.split("."):
            properties = properties[part]["properties"] if "properties" in properties.get(part, {}) else properties[part]
        for f in dataclasses.fields(cls):
            prop = properties[f.name]
            prop = prop.get("properties", {}).get("epidural", prop) if f.name == "prevalence" else prop
            prop = prop["oneOf"][0] if "oneOf" in prop else prop  # annotated_per_client: a number, or a list of them
            in_schema = {b: prop[b] for b in BOUNDS if b in prop}
            in_class = {b: f.metadata[b] for b in BOUNDS if b in f.metadata}
            assert in_schema == in_class, f"{section}.{f.name}: schema {in_schema}, config.py {in_class}"


# --- no silent garbage: partitions and splits ------------------------------------------------------------

def _partition_cases(federation: dict) -> list[tuple[str, object, str]]:
    def changed(change) -> dict:
        data = copy.deepcopy(federation)
        change(data)
        return data

    first, second = federation["clients"][0]["images"][0], federation["clients"][1]["images"][0]
    test0 = federation["test"][0]
    return [
        ("test leakage", changed(lambda d: d["clients"][0]["images"].append(test0)),
         f"image '{test0}' of client 0 is also in the test set (test leakage)"),
        ("image on two clients", changed(lambda d: d["clients"][1]["images"].append(first)), f"image '{first}' of client 1 is also in client 0 too"),
        ("unknown annotated class", changed(lambda d: d["clients"][0]["annotated_classes"].append("hematoma")),
         "client 0 annotates 'hematoma', which is not one of the classes"),
        ("empty client", changed(lambda d: d["clients"][2].update(images=[])), "client 2 images: empty"),
        ("duplicate classes", changed(lambda d: d.update(classes=d["classes"] + d["classes"][:1])), "classes: 'epidural' is listed twice"),
        ("duplicate image in a client", changed(lambda d: d["clients"][1]["images"].append(second)), f"client 1 images: '{second}' is listed twice"),
        ("client listed twice", changed(lambda d: d["clients"][1].update(id=0)), "client 0 is listed twice"),
        ("class nobody annotates", changed(lambda d: [c.update(annotated_classes=["epidural"]) for c in d["clients"]]),
         "no client annotates 'intraparenchymal'"),
        ("empty test set", changed(lambda d: d.update(test=[])), "test: empty"),
        ("validation leakage", changed(lambda d: d.update(val=[first])), f"image '{first}' of client 0 is also in the validation set (validation leakage)"),
        ("validation images in the test set", changed(lambda d: d.update(val=[test0])), f"image '{test0}' is in both val and test (test leakage)"),
        ("image not in the store", changed(lambda d: d["clients"][0]["images"].append("ID_nowhere")), "image 'ID_nowhere' is not in the store"),
        ("other classes", changed(lambda d: d.update(classes=list(reversed(d["classes"])))), "do not match the store's"),
        ("not an object", [1, 2], "not a partition"),
        ("client without images", changed(lambda d: d["clients"][0].pop("images")), "clients[0]: expected an object with id, images"),
        ("id not a number", changed(lambda d: d["clients"][0].update(id="zero")), "clients[0]: id 'zero' is not a client number"),
        ("images not strings", changed(lambda d: d["clients"][0].update(images=[1, 2])), "client 0 images: expected a list of names"),
    ]


def test_hand_made_partitions_are_checked_where_read(store: ImageStore, federation: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Through `fedmlp evaluate`, which reads the partition before anything else of weight."""
    cases = _partition_cases(federation)
    for name, data, message in cases:
        path = tmp_path / "partition.json"
        path.write_text(json.dumps(data))
        code = main(["evaluate", "--store", str(store.root), "--partition", str(path), "--model", str(tmp_path / "none.pt"),
                     "--rounds", str(tmp_path / "none.csv"), "--out-metrics", str(tmp_path / "m.json"),
                     "--out-predictions", str(tmp_path / "p.csv")])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and f"{path}: " in line and message in line, (name, line)
    assert not (tmp_path / "m.json").exists()


def test_hand_made_splits_are_checked_where_read(store: ImageStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = store.image_ids
    cases = [
        ({"train": ids[:50] + ids[60:61], "test": ids[60:]}, f"image '{ids[60]}' is in both train and test (test leakage)"),
        ({"train": ids[:50], "val": ids[50:55] + ids[60:61], "test": ids[60:]}, f"image '{ids[60]}' is in both val and test (test leakage)"),
        ({"train": ids[:50], "val": ids[49:55], "test": ids[60:]}, f"image '{ids[49]}' is in both train and val (validation leakage)"),
        ({"train": ids[:50], "val": "some", "test": ids[60:]}, "val: expected a list of names"),
        ({"train": ids[:50] + ids[:1], "test": ids[60:]}, f"train: '{ids[0]}' is listed twice"),
        ({"train": [], "test": ids[60:]}, "train: empty"),
        ({"train": ids[:50], "test": ["ID_nowhere"]}, "image 'ID_nowhere' is not in the store"),
        ({"train": ids[:50]}, "not a split"),
        ({"train": "all", "test": ids[60:]}, "train: expected a list of names"),
    ]
    for data, message in cases:
        path = tmp_path / "split.json"
        path.write_text(json.dumps(data))
        code = main(["partition", "--store", str(store.root), "--split", str(path), "--out", str(tmp_path / "partition.json")])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and f"{path}: " in line and message in line, line
    assert not (tmp_path / "partition.json").exists()


# --- no silent garbage: degenerate DICOMs and special files ---------------------------------------------------

def _tagged(target: Path, **tags) -> None:
    ds = pydicom.dcmread(HEAD_CT)
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.save_as(target)


def _huge_compressed(target: Path) -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.Rows, ds.Columns = 60000, 60000  # a few KB asking for 3.6 gigapixels
    ds.save_as(target)


def _tiny(target: Path) -> None:
    ds = pydicom.dcmread(HEAD_CT)
    ds.Rows, ds.Columns = 1, 2
    ds.PixelData = np.array([[0, 100]], dtype=np.int16).tobytes()
    ds.save_as(target)


DEGENERATE = {  # image ID → (how the file is made, what the reason must say)
    "ID_0000deg01": (lambda p: _tagged(p, RescaleSlope="NaN"), "RescaleSlope 'NaN' is not a finite number"),
    "ID_0000deg02": (lambda p: _tagged(p, WindowWidth="NaN"), "WindowWidth 'NaN' is not a finite number"),
    "ID_0000deg03": (lambda p: _tagged(p, WindowCenter="inf"), "WindowCenter 'inf' is not a finite number"),
    "ID_0000deg04": (lambda p: _tagged(p, RescaleSlope="1e38"), "pixel values are not finite after rescaling"),
    "ID_0000deg05": (lambda p: _tagged(p, WindowCenter=5000, WindowWidth=10), "constant after 'header' windowing"),
    "ID_0000deg06": (_tiny, "1 × 2 px is smaller than 16 × 16; not a usable slice"),
    "ID_0000deg07": (_huge_compressed, "60000 × 60000 px is more than the 67,108,864 pixels a slice may have; not decoded"),
    "ID_0000deg08": (lambda p: _tagged(p, NumberOfFrames=3), "3 frames, expected a single 2-D slice"),
    "ID_0000deg09": (lambda p: os.mkfifo(p), "a FIFO, not a regular file; skipped without opening it"),
    "ID_0000deg10": (lambda p: socket.socket(socket.AF_UNIX).bind(str(p)), "a socket, not a regular file; skipped without opening it"),
    "ID_0000deg11": (lambda p: p.mkdir(), "a directory, not a regular file"),
    "ID_0000deg12": (lambda p: p.symlink_to(p.parent / "nowhere.dcm"), "a broken symbolic link, not a regular file"),
}


def test_degenerate_dicoms_and_special_files_are_skipped_with_a_reason(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    images = root / rsna.IMAGE_DIR
    images.mkdir(parents=True)
    good = ["ID_000000a01", "ID_000000a02"]
    for image_id in good:
        os.link(HEAD_CT, images / f"{image_id}.dcm")
    for image_id, (make, _) in DEGENERATE.items():
        make(images / f"{image_id}.dcm")
    (root / rsna.LABEL_FILE).write_text("\n".join(["ID,Label", *label_rows([*good, *DEGENERATE])]) + "\n")
    settings = json.dumps({"size": 32, "max_skipped_fraction": 0.95})
    result = fedmlp("ingest", "--dataset", "ich", "--raw", str(root), "--out", str(tmp_path / "store"), "--settings", settings)
    assert result.returncode == 0, result.stderr
    assert ImageStore.open(tmp_path / "store").image_ids == good
    report = pd.read_csv(tmp_path / "store.skipped.csv").set_index("image_id")["reason"]
    for image_id, (_, reason) in DEGENERATE.items():
        assert reason in report[image_id] and f"{image_id}.dcm" in report[image_id], (image_id, report.get(image_id))


def test_a_fifo_as_the_label_file_is_never_opened(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / rsna.IMAGE_DIR).mkdir()
    os.mkfifo(tmp_path / rsna.LABEL_FILE)
    assert main(["ingest", "--dataset", "ich", "--raw", str(tmp_path), "--out", str(tmp_path / "store")]) == 2
    assert "stage_2_train.csv: a FIFO, not a regular file; refusing to read it" in one_error_line(capsys.readouterr().err)


def test_writes_leave_no_lock_files_behind(tmp_path: Path) -> None:
    """A lock is released and its file removed when the write ends, also for writes grouped until
    the command ends (a lock file left beside an output would be versioned with it by DVC)."""
    from fedmlp.atomic import atomic_path, output_group, write_text

    with output_group():
        write_text(tmp_path / "a.md", "a\n")
        with atomic_path(tmp_path / "b.csv") as tmp:
            tmp.write_text("b\n")
    write_text(tmp_path / "c.txt", "c\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md", "b.csv", "c.txt"]
    with output_group():  # and the same targets can be written again at once
        write_text(tmp_path / "a.md", "again\n")
    assert (tmp_path / "a.md").read_text() == "again\n"
