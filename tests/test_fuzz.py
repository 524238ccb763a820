"""Property-based fuzzing of every ``fedmlp`` subcommand's inputs (Hypothesis).

Each example starts from a small valid set of inputs for one subcommand and breaks one of them: an
option's text, a JSON option or file (a value replaced by NaN, infinity, 0, -1, a huge number, a
string, null, a list ...; a key removed or added; not JSON at all), a CSV (a cell, a column or a
line changed; empty; binary), a checkpoint (NaN weights, a wrong shape, tampered metadata, cut),
a DICOM (cut, bytes flipped). The property: the command either succeeds or exits 2 with one line
``fedmlp <command>: error: ...``, never a traceback, and a failed command leaves none of its outputs.

Commands run in this process (no start-up per example) on tiny inputs, so that an example that
passes every check (and trains) takes a second or two; `max_examples` bounds the whole file to about
a minute on 2 cores.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_bad_input import GOOD_NIH, HEAD_CT, NIH_HEADER, _nih_row, label_rows

from fedmlp import versioning
from fedmlp.cli import main
from fedmlp.commands import MODULES
from fedmlp.config import ModelConfig, to_dict
from fedmlp.models import build_model
from fedmlp.sources import nih, rsna
from fedmlp.store import ImageStore

EXAMPLES = int(os.environ.get("FEDMLP_FUZZ_EXAMPLES", "12"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])

GARBAGE = [None, True, 0, -1, 1.5, 64.0, 2**31, 2**32, 2**63, 10**30, -(10**30), math.nan, math.inf, -math.inf, 1e308, "",
           "x", "0", "nan", "../../etc/passwd", "$(touch PWNED)", [], [0], {}, {"a": 1}]
TEXT = st.one_of(st.sampled_from(["", "1", "3", "16", "0", "-1", "nan", "inf", "1e999", "9" * 30, "abc", "{", "[]", "{}", "null", "🙂", "--out"]),
                 st.text(max_size=12))


def garbage() -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(GARBAGE), st.text(max_size=6))


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value, the value itself included."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:4]):
            out += _paths(item, (*prefix, index))
    return out


@st.composite
def mutated_json(draw, base: Any) -> Any:
    """``base`` with one place replaced by garbage, removed, or given an unknown neighbour."""
    data = copy.deepcopy(base)
    path = draw(st.sampled_from(_paths(data)))
    if not path:
        return draw(garbage())
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "replace", "replace", "remove", "add"]))
    if action == "remove":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.sampled_from(["extra", "", "rounds "]))] = draw(garbage())
    elif action == "add":
        parent.append(draw(garbage()))
    else:
        parent[path[-1]] = draw(garbage())
    return data


def json_text(base: Any) -> st.SearchStrategy[str]:
    return st.one_of(mutated_json(base).map(json.dumps), TEXT)


def json_bytes(base: Any) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated_json(base).map(lambda d: json.dumps(d).encode()), st.binary(max_size=40), st.just(b""))


@st.composite
def mutated_csv(draw, base: str) -> bytes:
    lines = base.splitlines()
    action = draw(st.sampled_from(["cell", "cell", "cell", "drop line", "duplicate line", "header", "empty", "binary", "truncate"]))
    if action == "empty":
        return b""
    if action == "binary":
        return draw(st.binary(max_size=60))
    if action == "truncate":
        return base.encode()[: draw(st.integers(0, len(base)))]
    index = draw(st.integers(0, len(lines) - 1))
    if action == "drop line":
        del lines[index]
    elif action == "duplicate line":
        lines.insert(index, lines[index])
    elif action == "header":
        cells = lines[0].split(",")
        cells[draw(st.integers(0, len(cells) - 1))] = draw(st.sampled_from(["", "x", "round", "image_id"]))
        lines[0] = ",".join(cells)
    else:
        cells = lines[index].split(",")
        cells[draw(st.integers(0, len(cells) - 1))] = str(draw(st.sampled_from(GARBAGE[:14] + ["a,b", '"', "1;2"])))
        lines[index] = ",".join(cells)
    return ("\n".join(lines) + "\n").encode()


@st.composite
def mutated_checkpoint(draw, base: str) -> bytes:
    payload = torch.load(base, weights_only=True)
    state, meta = payload["state_dict"], payload["meta"]
    name = draw(st.sampled_from(sorted(k for k, v in state.items() if v.is_floating_point())))
    action = draw(st.sampled_from(["nan", "inf", "shape", "drop weight", "meta", "format", "cut", "bytes", "not a dict"]))
    if action in ("nan", "inf"):
        state[name] = state[name].clone().view(-1).index_fill_(0, torch.tensor([0]), math.nan if action == "nan" else math.inf).view(state[name].shape)
    elif action == "shape":
        state[name] = torch.zeros(3, 2)
    elif action == "drop weight":
        del state[name]
    elif action == "meta":
        key = draw(st.sampled_from(["model", "classes"]))
        meta[key] = draw(st.one_of(mutated_json(meta[key]), garbage()))
    elif action == "format":
        payload["format"] = draw(garbage())
    elif action == "not a dict":
        payload = [1, 2, 3]
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    if action == "cut":
        return data[: draw(st.integers(0, len(data) - 1))]
    if action == "bytes":
        return draw(st.binary(max_size=64))
    return data


@st.composite
def mutated_bytes(draw, base: str) -> bytes:
    data = bytearray(Path(base).read_bytes())
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


# --- the commands and their inputs ------------------------------------------------------------------------

@dataclass
class Command:
    """One subcommand: its valid options, which of them are outputs, and how each input may be broken
    (an option's text, or a file's bytes)."""

    argv: Callable[[dict[str, str]], list[str]]  # from the option values to the argument list
    options: dict[str, str]  # valid values; paths to the module's shared input files
    texts: dict[str, st.SearchStrategy[str]] = field(default_factory=dict)
    files: dict[str, st.SearchStrategy[bytes]] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()  # options naming outputs (a fresh directory per example)


def flags(*positional: str) -> Callable[[dict[str, str]], list[str]]:
    def argv(values: dict[str, str]) -> list[str]:
        out = [values[p] for p in positional]
        for key, value in values.items():
            if key not in positional:
                out += [key, *value] if isinstance(value, list) else [key, value]
        return out

    return argv


def _base_checkpoint(classes: list[str]) -> dict:
    config = ModelConfig(width=4)
    torch.manual_seed(0)
    model = build_model(config, len(classes))
    return {"format": 1, "state_dict": model.state_dict(),
            "meta": {"model": to_dict(config), "classes": classes, "method": "fedmlp", "seed": 0, "rounds": 1, "precision": "fp32"}}


@pytest.fixture(scope="module")
def inputs(store: ImageStore, federation: dict, raw_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Command]:
    """Valid inputs for every subcommand, written once; each example breaks one of them."""
    root = tmp_path_factory.mktemp("fuzz")
    classes = store.classes

    def put(name: str, data: bytes | str) -> str:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    dvc_yaml = put("dvc.yaml", versioning.render())
    (root / "partition.json").write_text(json.dumps(federation))
    split = {"train": [i for c in federation["clients"] for i in c["images"]], "test": federation["test"]}
    ckpt = _base_checkpoint(classes)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    rounds_csv = "round,train_loss,test_mAP,test_AUROC,val_mAP,val_AUROC\n1,0.7,0.5,0.5,0.4,0.5\n"
    train = {"rounds": 2, "batch_size": 8, "precision": "fp32", "device": "cpu", "eval_every": 2}
    fedmlp = {"warmup_rounds": 1, "tau0": {"fixed": 0.3}, "tau1": {"fixed": 0.3}}
    model = {"width": 4}
    common = {"--store": str(store.root), "--partition": str(root / "partition.json"), "--method": "fedmlp", "--seed": "0",
              "--train": json.dumps(train), "--model": json.dumps(model), "--method-settings": json.dumps(fedmlp)}
    warmup_model = put("warmup/model.pt", buffer.getvalue())
    put("warmup/rounds.csv", rounds_csv)
    assert main(["--log-level", "ERROR", "pseudolabel", *flags()({**common, "--warmup-model": warmup_model,
                 "--out-artifact": str(root / "pseudolabels.json"), "--out-summary": str(root / "pseudolabels.md")})]) == 0
    pseudolabels = json.loads((root / "pseudolabels.json").read_text())
    metrics_args = {**common, "--method": "fedavg-full", "--model": json.dumps(model), "--rounds": put("rounds.csv", rounds_csv),
                    "--out-metrics": str(root / "metrics.json"), "--out-predictions": str(root / "predictions.csv"),
                    "--run": json.dumps({"dataset": "d", "setting": "s", "method": "fedavg-full", "seed": 0})}
    assert main(["--log-level", "ERROR", "evaluate", "--store", str(store.root), "--partition", common["--partition"], "--model",
                 warmup_model, "--rounds", metrics_args["--rounds"], "--run", metrics_args["--run"], "--device", "cpu",
                 "--out-metrics", metrics_args["--out-metrics"], "--out-predictions", metrics_args["--out-predictions"]]) == 0
    metrics = json.loads((root / "metrics.json").read_text())
    diagnostics = "dataset,setting,method,seed,round,client,class,selected_negative,selected_positive,correct_negative,correct_positive,hidden_positives\n" \
                  "d,s,fedmlp,0,2,0,epidural,3,1,3,1,2\n"
    rsna_raw = root / "rsna"
    (rsna_raw / rsna.IMAGE_DIR).mkdir(parents=True)
    for image_id in ("ID_000000a01", "ID_000000a02"):
        os.link(HEAD_CT, rsna_raw / rsna.IMAGE_DIR / f"{image_id}.dcm")
    rsna_labels = "\n".join(["ID,Label", *label_rows(["ID_000000a01", "ID_000000a02"])]) + "\n"
    (rsna_raw / rsna.LABEL_FILE).write_text(rsna_labels)
    nih_entry = "\n".join([NIH_HEADER, *GOOD_NIH, *(_nih_row(f"n{i}.png", "Effusion" if i % 2 else "Mass") for i in range(8))]) + "\n"
    for archive in nih.ARCHIVES:  # a download that only lacks the label file: no network
        put(f"nih/.extracted/{archive.name}", "1\n")
    dicom = HEAD_CT.read_bytes()
    json_settings = {
        "synthetic": {"n_images": 10, "image_size": 32, "duplicated_images": 1},
        "preprocess": {"size": 16, "max_skipped_fraction": 0.5},
        "split": {"train_fraction": 0.7, "seed": 1},
        "federation": {"n_clients": 2, "annotated_per_client": 3},
    }

    pack_runs = [{"argv": ["train", "--help"], "log": None}, {"argv": ["warmup", "--help"], "log": str(root / "logs" / "pack.log")}]

    def training(extra: dict[str, str], extra_files: dict[str, st.SearchStrategy[bytes]] = {}, outputs: tuple = ()) -> Command:
        options = {**common, **extra}
        return Command(flags(), options, texts={"--train": json_text(train), "--model": json_text(model),
                                                "--method-settings": json_text(fedmlp), "--seed": TEXT, "--method": TEXT},
                       files={"--partition": json_bytes(federation), **extra_files}, outputs=outputs)

    return {
        "synth": Command(flags(), {"--settings": json.dumps(json_settings["synthetic"]), "--out": ""},
                         texts={"--settings": json_text(json_settings["synthetic"])}, outputs=("--out",)),
        "download": Command(flags("dataset"), {"dataset": "chestxray14", "--out": str(root / "nih"), "--settings": "{}", "--done": ""},
                            texts={"--settings": json_text({"archive_base_url": "https://example.org", "metadata_base_url": None,
                                                            "classes": ["Mass"], "keep_archives": False}), "dataset": TEXT},
                            outputs=("--done",)),
        "ingest": Command(flags(), {"--dataset": "ich", "--raw": str(rsna_raw), "--out": "", "--report": str(root / "skipped.csv"),
                                    "--settings": json.dumps(json_settings["preprocess"]), "--workers": "1"},
                          texts={"--settings": json_text(json_settings["preprocess"]), "--workers": TEXT, "--dataset": TEXT},
                          files={f"--raw:{rsna.LABEL_FILE}": mutated_csv(rsna_labels),
                                 f"--raw:{rsna.IMAGE_DIR}/ID_000000a01.dcm": mutated_bytes(str(HEAD_CT))}, outputs=("--out",)),
        "split": Command(flags(), {"--store": str(store.root), "--settings": json.dumps(json_settings["split"]), "--out": ""},
                         texts={"--settings": json_text(json_settings["split"])}, outputs=("--out",)),
        "partition": Command(flags(), {"--store": str(store.root), "--split": put("split.json", json.dumps(split)),
                                       "--settings": json.dumps(json_settings["federation"]), "--out": ""},
                             texts={"--settings": json_text(json_settings["federation"])}, files={"--split": json_bytes(split)},
                             outputs=("--out",)),
        "paper-split": Command(flags("dataset"), {"dataset": "chestxray14", "--data-entry": put("Data_Entry.csv", nih_entry), "--out": "",
                                                  "--clients": "2", "--classes": "Mass,Effusion"},
                               texts={"--clients": TEXT, "--classes": TEXT}, files={"--data-entry": mutated_csv(nih_entry)},
                               outputs=("--out",)),
        "train": training({"--method": "fedavg-full", "--method-settings": "{}", "--out-model": "", "--out-rounds": "",
                           "--resume-state": str(root / "resume.pt")}, {"--resume-state": st.binary(max_size=30)},
                          outputs=("--out-model", "--out-rounds")),
        "warmup": training({"--out-model": "", "--out-rounds": ""}, outputs=("--out-model", "--out-rounds")),
        "pseudolabel": training({"--warmup-model": warmup_model, "--out-artifact": "", "--out-summary": ""},
                                {"--warmup-model": mutated_checkpoint(warmup_model)}, outputs=("--out-artifact", "--out-summary")),
        "teacher": training({"--warmup-model": warmup_model, "--warmup-rounds": str(root / "warmup" / "rounds.csv"),
                             "--pseudolabels": str(root / "pseudolabels.json"), "--run": metrics_args["--run"],
                             "--out-model": "", "--out-rounds": "", "--out-diagnostics": ""},
                            {"--warmup-model": mutated_checkpoint(warmup_model), "--warmup-rounds": mutated_csv(rounds_csv),
                             "--pseudolabels": json_bytes(pseudolabels)},
                            outputs=("--out-model", "--out-rounds", "--out-diagnostics")),
        "federate": training({"--min-sites": "999", "--out-model": "", "--out-rounds": ""}, outputs=("--out-model", "--out-rounds")),
        "evaluate": Command(flags(), {k: v for k, v in metrics_args.items() if k not in ("--method", "--seed", "--train", "--model",
                                                                                          "--method-settings")} | {"--model": warmup_model,
                                                                                                                   "--device": "cpu"},
                            texts={"--run": json_text(json.loads(metrics_args["--run"])), "--threads": TEXT},
                            files={"--model": mutated_checkpoint(warmup_model), "--rounds": mutated_csv(rounds_csv),
                                   "--partition": json_bytes(federation)},
                            outputs=("--out-metrics", "--out-predictions")),
        "report": Command(flags("metrics"), {"metrics": str(root / "metrics.json"), "--diagnostics": put("diagnostics.csv", diagnostics),
                                             "--summary": "", "--report": "", "--figure": "", "--latex": ""},
                          files={"metrics": json_bytes(metrics), "--diagnostics": mutated_csv(diagnostics)},
                          outputs=("--summary", "--report", "--figure", "--latex")),
        "pack": Command(flags(), {"--runs": json.dumps(pack_runs)}, texts={"--runs": json_text(pack_runs)}),  # --help: no training
        "methods": Command(flags(), {}, texts={"--bogus": TEXT}),
        "verify": Command(flags("store"), {"store": str(store.root)}, texts={"store": TEXT}),
        "dvc-yaml": Command(flags(), {"--check": [], "--out": dvc_yaml}, texts={"--out": TEXT}, files={"--out": mutated_bytes(dvc_yaml)}),
        "dvc-fetch": Command(flags(), {"--root": str(root)}, texts={"--root": TEXT}),  # not a DVC repository: no remote
        "plots": Command(flags(), {"--root": str(root), "--out": ""}, texts={"--root": TEXT}, outputs=("--out",)),  # not a DVC repository
        "metrics": Command(flags(), {"--root": str(root), "--experiments": []}, texts={"--root": TEXT}),
        "bench": Command(flags(), {"--stage": "loader", "--size": "16", "--images": "8", "--batch-size": "4", "--model": "compact-cnn",
                                   "--threads": "1", "--store": str(store.root), "--json": ""},
                         texts={k: TEXT for k in ("--stage", "--size", "--images", "--batch-size", "--channels", "--threads", "--precision")},
                         outputs=("--json",)),
        "flower-app": Command(flags("out"), {"out": ""}, files={"out": st.binary(max_size=10)}),
        "dicom2png": Command(flags("input", "output"), {"--windowing": "header", "--size": "16", "input": put("slice.dcm", dicom), "output": ""},
                             texts={"--windowing": TEXT, "--size": TEXT}, files={"input": mutated_bytes(str(HEAD_CT))}, outputs=("output",)),
    }


def run(argv: list[str]) -> tuple[int, str]:
    """``fedmlp argv`` in this process: exit status and stderr (an exception other than SystemExit
    escapes, failing the test with its traceback)."""
    err = io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            code = main(["--log-level", "ERROR", "--library-log-level", "ERROR", *argv])
        except SystemExit as exc:
            code = exc.code
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(False)
    return code, err.getvalue()


def test_the_fuzz_covers_every_subcommand(inputs: dict[str, Command]) -> None:
    from fedmlp.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert set(sub.choices) == set(inputs), "a subcommand without fuzzing"
    assert len(MODULES) >= 8


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Downloads fail at once (no network, no waiting between retries); no Kaggle credentials."""
    import urllib.error

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network in the fuzz test")

    monkeypatch.setattr("fedmlp.download._open", refuse)
    monkeypatch.setattr("fedmlp.download.time.sleep", lambda seconds: None)
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # a relative path from the fuzz lands there (pytest removes old ones)


@pytest.mark.parametrize("name", ["synth", "download", "ingest", "split", "partition", "paper-split", "train", "warmup", "pseudolabel",
                                  "teacher", "federate", "evaluate", "report", "methods", "verify", "bench", "flower-app", "dicom2png",
                                  "dvc-yaml", "dvc-fetch", "plots", "metrics"])
@FUZZ
@given(data=st.data())
def test_broken_input_is_one_line_and_leaves_no_output(inputs: dict[str, Command], name: str, data: st.DataObject) -> None:
    command = inputs[name]
    choices = [("text", k) for k in command.texts] + [("file", k) for k in command.files]
    kind, key = data.draw(st.sampled_from(choices), label="what is broken")
    with tempfile.TemporaryDirectory(prefix="fedmlp-fuzz-") as scratch:
        scratch = Path(scratch)
        values = dict(command.options)
        for option in command.outputs:
            values[option] = str(scratch / "out" / option.strip("-").replace("-", "_"))
        if kind == "text":
            values[key] = data.draw(command.texts[key], label=key)
        elif ":" in key:  # a file inside an input directory: break it in a copy of the directory
            option, relative = key.split(":", 1)
            copy_root = scratch / "in" / Path(values[option]).name
            shutil.copytree(values[option], copy_root)
            (copy_root / relative).write_bytes(data.draw(command.files[key], label=key))
            values[option] = str(copy_root)
        else:
            broken = scratch / "in" / Path(values[key]).name
            broken.parent.mkdir(parents=True, exist_ok=True)
            broken.write_bytes(data.draw(command.files[key], label=key))
            values[key] = str(broken)
        code, err = run([name, *command.argv(values)])
        event(f"exit {code}" + (f": {err.split('error: ')[-1][:70]}" if os.environ.get("FEDMLP_FUZZ_EVENTS") else ""))
        lines = err.strip().splitlines()
        assert code in (0, 2), (code, err)
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith(("fedmlp: error: ", f"fedmlp {name}: error: ")), err
            leftovers = [p for p in (scratch / "out").rglob("*") if p.is_file()] if (scratch / "out").exists() else []
            assert not leftovers, f"a failed command left {leftovers}"
