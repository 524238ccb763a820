"""``fedmlp train`` (any method, all rounds) and FedMLP's stages ``warmup``, ``pseudolabel``, ``teacher``.

All four read the same inputs (:func:`training_inputs`); the three that train share one
train → write rounds → save checkpoint → score it on the test set → clear resume state sequence
(:func:`train_and_save`). Each counts its model passes (:mod:`fedmlp.compute`): the scored run's
``metrics.json`` gets them as ``compute``, and FedMLP's earlier stages write theirs to a file
(``--out-compute``) that the teacher stage adds in (``--earlier-compute``), so a staged run's compute
covers all its stages. Scoring in the training job rather than in a job of its own saves a Python,
torch and scikit-learn start-up per run (about 5 CPU-seconds each, a tenth of the default pipeline).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmlp.commands.common import count, declare_paths, parse_json_option, read_json, seed
from fedmlp.errors import FedmlpError

INPUTS = ("--store", "--partition")  # path options of every training command
OUTPUTS = ("--out-model", "--out-rounds", "--resume-state")  # and of those that train (the resume state is rewritten)
ROUND_COLUMNS = ("round", "train_loss", "test_mAP", "test_AUROC", "val_mAP", "val_AUROC")  # a training run's rounds.csv


@dataclass
class TrainingInputs:
    store: Any
    partition: dict
    method: Any
    train: Any
    model_config: Any
    runtime: Any


def training_inputs(args: argparse.Namespace) -> TrainingInputs:
    """Store, partition, method, settings and runtime shared by the training commands."""
    from fedmlp import runtime
    from fedmlp.config import MAX_ROUNDS, ModelConfig, TrainConfig, from_json
    from fedmlp.methods import registry
    from fedmlp.partition import read_partition
    from fedmlp.store import ImageStore

    train = from_json(TrainConfig, args.train, "train")
    model_config = from_json(ModelConfig, args.model, "model")
    if getattr(args, "out_metrics", None) is not None:
        from fedmlp.commands.evaluate import parse_run

        parse_run(args.run)  # a bad --run fails before training, not after
        if args.out_predictions is None:
            raise FedmlpError("--out-metrics: needs --out-predictions too (the test probabilities are scored from them)")
    settings = parse_json_option(args.method_settings, "--method-settings")
    if not isinstance(settings, dict):
        raise FedmlpError(f"--method-settings: expected a JSON object (the method's config section), got {args.method_settings!r}")
    method = registry.create(args.method, settings)
    rounds = method.n_rounds(train)
    if not 1 <= rounds <= MAX_ROUNDS:
        raise FedmlpError(f"method {args.method!r}: a schedule of {rounds} rounds; expected 1 to {MAX_ROUNDS} (check its config section)")
    store = ImageStore.open(args.store, require_verified=True)
    if method.label_access == "full" or method.reads_hidden_labels():
        from fedmlp.sources.custom import check_assessed

        check_assessed(store.manifest, f"method {args.method!r} (it reads the true labels of missing classes)")
    partition = read_partition(args.partition, store)
    rt = runtime.resolve(train.device, train.precision, train.threads, train.deterministic)
    return TrainingInputs(store, partition, method, train, model_config, rt)


def staged(inputs: TrainingInputs, args: argparse.Namespace):
    from fedmlp.methods import registry

    if not registry.spec(args.method).staged:
        raise FedmlpError(f"method {args.method!r} is not trained in stages; use 'fedmlp train'")
    return inputs.method


def write_rounds(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    from fedmlp.atomic import atomic_path

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def resume_point(args: argparse.Namespace, *files: Path):
    """Where this run saves its state between rounds, keyed by everything the run depends on."""
    from fedmlp.resume import ResumePoint, fingerprint
    from fedmlp.store import MANIFEST

    if args.resume_state is None:
        return None
    key = fingerprint(args.command, args.method, args.seed, args.train, args.model, args.method_settings,
                      files=(args.store / MANIFEST, args.partition, *files))
    return ResumePoint(args.resume_state, key, every=args.resume_every)


def checkpoint_meta(model_config: Any, classes: list[str], method: str, seed: int, rounds: int, precision: str) -> dict:
    """What a trained checkpoint says about itself (also written by ``fedmlp federate``)."""
    from fedmlp.config import to_dict

    return {"model": to_dict(model_config), "classes": classes, "method": method, "seed": seed, "rounds": rounds,
            "precision": precision}


def write_compute(args: argparse.Namespace, compute) -> None:
    """A stage's pass counts, for the stage that scores the run (``--out-compute``, when given)."""
    from fedmlp.atomic import write_json

    if args.out_compute is not None:
        write_json(args.out_compute, compute.counts())


def earlier_compute(paths: list[Path]):
    """The summed counts of the earlier stages' compute files (None without any)."""
    from fedmlp.compute import Compute

    stages = [Compute.from_json(read_json(path), str(path)) for path in paths]
    return sum(stages[1:], stages[0]) if stages else None


def train_and_save(args: argparse.Namespace, inputs: TrainingInputs, rounds: range, initial_model=None,
                   on_round_end: Callable | None = None, earlier_rounds: list[dict] | None = None,
                   resume_files: tuple[Path, ...] = (), earlier=None):
    """Train ``rounds``, then write the per-round CSV (after ``earlier_rounds``) and the checkpoint;
    the run's compute is this training's passes plus ``earlier`` (the earlier stages')."""
    from fedmlp import checkpoint, federated

    resume = resume_point(args, *resume_files)
    live = None
    if args.live is not None:
        from fedmlp.live import LiveMetrics  # DVCLive: about 0.3 s more per job, only when asked for

        live = LiveMetrics(args.live, earlier_rounds or [])
    result = federated.run(inputs.store, inputs.partition, inputs.method, inputs.train, inputs.model_config, args.seed,
                           inputs.runtime, rounds=rounds, initial_model=initial_model, on_round_end=on_round_end, resume=resume,
                           on_record=live.log if live is not None else None)
    rows = (earlier_rounds or []) + federated.history_rows(result.history)
    write_rounds(args.out_rounds, rows)
    if live is not None:
        live.close()
    meta = checkpoint_meta(inputs.model_config, inputs.store.classes, args.method, args.seed, rounds.stop, inputs.runtime.precision)
    if result.dropped:  # train.min_sites let the run go on without them (as a Flower run's checkpoint says)
        meta["dropped_sites"] = result.dropped
    checkpoint.save(args.out_model, result.model, meta)
    compute = result.compute if earlier is None else earlier + result.compute
    write_compute(args, compute)
    if getattr(args, "out_metrics", None) is not None:
        score_final_model(args, inputs, checkpoint.as_loaded(result.model, meta), rows, compute, result.gates)
    if resume:
        resume.clear()
    return result


def score_final_model(args: argparse.Namespace, inputs: TrainingInputs, model, rows: list[dict], compute, gates: list[dict]) -> None:
    """The saved model on the test set (thresholds from the validation set), as ``fedmlp evaluate``
    would score the files just written (the outputs are renamed into place only when the command
    succeeds, so they are not read back), with the run's counted compute and gate rates beside the metrics."""
    from fedmlp.commands.evaluate import parse_run, score

    score(model, inputs.store, inputs.partition, rows, parse_run(args.run), inputs.train.device, inputs.train.threads,
          args.out_metrics, args.out_predictions, warnings=inputs.method.warnings(), compute=compute.to_json(), gates=gates)


def cmd_train(args: argparse.Namespace) -> None:
    inputs = training_inputs(args)
    train_and_save(args, inputs, range(inputs.method.n_rounds(inputs.train)))


def cmd_warmup(args: argparse.Namespace) -> None:
    inputs = training_inputs(args)
    warmup_rounds = staged(inputs, args).first_stage2_round
    if warmup_rounds < 1:
        raise FedmlpError("config key 'fedmlp.warmup_rounds': expected at least 1")
    train_and_save(args, inputs, range(warmup_rounds))


def load_warmup(path: Path, inputs: TrainingInputs):
    from fedmlp import checkpoint
    from fedmlp.config import to_dict

    model, meta = checkpoint.load(path)
    if meta["classes"] != inputs.store.classes or meta["model"] != {**to_dict(inputs.model_config), "pretrained": meta["model"].get("pretrained")}:
        raise FedmlpError(f"{path}: was trained for another model or class list than this run's config")
    return model.to(inputs.runtime.device)


def cmd_pseudolabel(args: argparse.Namespace) -> None:
    """The first stage-2 round's prepare exchange and each client's detection, without training."""
    from fedmlp import federated
    from fedmlp.atomic import write_json, write_text
    from fedmlp.diagnostics import pseudo_label_quality, summary_markdown

    inputs = training_inputs(args)
    method = staged(inputs, args)
    model = load_warmup(args.warmup_model, inputs)
    site = federated.start_round(inputs.store, inputs.partition, method, inputs.train, inputs.runtime, args.seed, model,
                                 method.first_stage2_round)
    clients = list(site.clients.values())
    artifact = method.export(clients, site.state_list(), inputs.store)
    quality = pseudo_label_quality(method.first_stage2_round + 1, inputs.store, clients, site.state_list())
    write_json(args.out_artifact, artifact)
    write_text(args.out_summary, summary_markdown(artifact, quality))
    write_compute(args, site.compute(0))


def cmd_teacher(args: argparse.Namespace) -> None:
    from fedmlp.commands.evaluate import parse_run
    from fedmlp.diagnostics import pseudo_label_quality
    from fedmlp.inputs import read_csv
    from fedmlp.pseudolabels import check_artifact

    run_info = parse_run(args.run)
    inputs = training_inputs(args)
    method = staged(inputs, args)
    artifact = check_artifact(read_json(args.pseudolabels), args.pseudolabels, method.name, inputs.store, inputs.partition)
    method.preload(artifact)
    model = load_warmup(args.warmup_model, inputs)
    warmup = read_csv(args.warmup_rounds, ROUND_COLUMNS, numeric=ROUND_COLUMNS, allow_nan=ROUND_COLUMNS[1:])
    if warmup["round"].tolist() != list(range(1, method.first_stage2_round + 1)):
        raise FedmlpError(f"{args.warmup_rounds}: rounds {warmup['round'].tolist()}, expected the warm-up's 1 to {method.first_stage2_round}")

    def record(round_number, clients, states):
        return [{**run_info, **row} for row in pseudo_label_quality(round_number, inputs.store, clients, states)]

    stage2 = range(method.first_stage2_round, method.n_rounds(inputs.train))
    result = train_and_save(args, inputs, stage2, initial_model=model, on_round_end=record, earlier_rounds=warmup.to_dict(orient="records"),
                            resume_files=(args.warmup_model, args.pseudolabels), earlier=earlier_compute(args.earlier_compute))
    write_rounds(args.out_diagnostics, result.round_rows)


PACKABLE = ("train", "warmup", "pseudolabel", "teacher")  # the commands ``fedmlp pack`` runs


@dataclass(frozen=True)
class PackedRun:
    """One command of a pack: its arguments (as ``fedmlp`` takes them) and the file its output goes to."""

    argv: list[str]
    log: Path | None


def parse_runs(text: str) -> list[PackedRun]:
    """``--runs``: a JSON list of {"argv": [command, options...], "log": path or null}, each command a training one."""
    runs = parse_json_option(text, "--runs")
    if not isinstance(runs, list) or not runs:
        raise FedmlpError("--runs: expected a non-empty JSON list of {\"argv\": [...], \"log\": path or null}")
    parsed = []
    for k, run in enumerate(runs, 1):
        argv = run.get("argv") if isinstance(run, dict) else None
        log = run.get("log") if isinstance(run, dict) else None
        if (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
                or argv[0] not in PACKABLE or not (log is None or isinstance(log, str) and log and "\0" not in log)):
            raise FedmlpError(f"--runs: entry {k} is not {{\"argv\": [one of {', '.join(PACKABLE)}, options...], \"log\": path or null}}")
        parsed.append(PackedRun(argv, Path(log) if log else None))
    return parsed


def cmd_pack(args: argparse.Namespace) -> None:
    """Run several training commands one after the other in this process: one Python, torch and
    scikit-learn start-up (about 3 CPU-s) instead of one per run. Each run seeds its own generators
    and writes its outputs as its own command would, so the files are the same bytes as separate
    processes write; each run's standard output and error go to its own log. The first failure
    stops the pack with that run's exit status."""
    from fedmlp.resume import cleared_together

    runs = parse_runs(args.runs)
    with cleared_together():  # a failed pack keeps its finished runs' states (fedmlp.resume)
        for k, run in enumerate(runs, 1):
            run_packed(run, f"run {k} of {len(runs)}")


def run_packed(run: PackedRun, label: str) -> None:
    """One run of a pack through fedmlp's entry point (parsing, logging, errors, signals as in a
    process of its own), its output into its log."""
    import shlex
    import sys

    from fedmlp.cli import main

    with output_to(run.log):
        print(f"fedmlp pack: {label}: fedmlp {shlex.join(run.argv)}", file=sys.stderr, flush=True)
        try:
            code = main(run.argv)
        except SystemExit as exc:  # argparse's usage error (status 2) or --help (0)
            code = exc.code if isinstance(exc.code, int) else 2
    if code != 0:
        where = f" (log: {run.log}: {last_line(run.log)})" if run.log is not None else ""
        raise PackFailed(code, f"{label}, fedmlp {run.argv[0]}, failed with exit {code}{where}")


@contextlib.contextmanager
def output_to(log: Path | None) -> Iterator[None]:
    """Standard output and error (the file descriptors, so library and C output too) into ``log``,
    truncated first, as a shell's ``> log 2>&1`` would; nothing changes for None."""
    import os
    import sys

    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for target, original in enumerate(saved, 1):
            os.dup2(original, target)
            os.close(original)


class PackFailed(FedmlpError):
    """A run of a pack failed: the pack exits with that run's status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = code


def last_line(path: Path) -> str:
    """The last non-empty line of a log (a failed command's one-line error)."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "unreadable"
    return lines[-1] if lines else "empty"


def add_commands(add) -> None:
    def training_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", type=Path, required=True)
        p.add_argument("--partition", type=Path, required=True)
        p.add_argument("--method", required=True, help="a registered method (fedmlp methods lists them)")
        p.add_argument("--seed", type=seed, required=True)
        p.add_argument("--train", default="{}", metavar="JSON", help="""the 'train' config section, e.g. '{"rounds": 20, "batch_size": 32}'""")
        p.add_argument("--model", default="{}", metavar="JSON", help="""the 'model' config section, e.g. '{"arch": "compact-cnn", "width": 12}'""")
        p.add_argument("--method-settings", default="{}", metavar="JSON",
                          help="""the method's own config section, e.g. '{"warmup_rounds": 8, "lambda_cr": 1.0}' for fedmlp""")

    def resume_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--resume-state", type=Path, default=None,
                       help="file for the state between rounds: saved as training goes, continued if present, removed at the end")
        p.add_argument("--resume-every", type=count(1), default=1, help="save the state every N rounds")

    def outputs(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out-model", type=Path, required=True)
        p.add_argument("--out-rounds", type=Path, required=True)
        p.add_argument("--live", type=Path, default=None,
                       help="also write each round's loss, test and validation scores here as it ends (DVCLive: plots/metrics/*.tsv, metrics.json); "
                            "written as training goes, not at the end like the other outputs")

    def compute_output(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out-compute", type=Path, default=None,
                       help="also write this stage's counted model passes (JSON), for the stage that scores the run (--earlier-compute)")

    def scored_outputs(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run", default="{}", metavar="JSON", help="the run's identity, copied into the outputs, e.g. "
                       '\'{"dataset": "synthetic-ich", "setting": "iid-k5-a1", "method": "fedmlp", "seed": 0}\'')
        p.add_argument("--out-metrics", type=Path, default=None, help="also score the final checkpoint on the test set (as fedmlp evaluate)")
        p.add_argument("--out-predictions", type=Path, default=None, help="per-image test probabilities (with --out-metrics)")

    p = add("train", cmd_train, "federated training of one method with one seed (all its rounds)")
    training_args(p)
    resume_args(p)
    outputs(p)
    scored_outputs(p)
    compute_output(p)
    declare_paths(p, INPUTS, [*OUTPUTS, "--out-metrics", "--out-predictions", "--out-compute"], ["--live"])

    p = add("pack", cmd_pack, "several training commands in one process (one start-up), each with its own log")
    p.add_argument("--runs", required=True, metavar="JSON",
                   help="fedmlp train, warmup, pseudolabel or teacher commands, run in order, each with its own log (or null: this "
                        "process's output); the first failure stops the pack with its exit status; "
                        """e.g. '[{"argv": ["train", "--store", "s", "--partition", "p.json", ...], "log": "logs/seed0.log"}, ...]' """)
    p.set_defaults(grouped=False)  # each run renames its own outputs into place as its command would

    p = add("warmup", cmd_warmup, "FedMLP stage 1: the warm-up rounds, ending in the warm-up checkpoint")
    training_args(p)
    resume_args(p)
    outputs(p)
    compute_output(p)
    declare_paths(p, INPUTS, [*OUTPUTS, "--out-compute"], ["--live"])

    p = add("pseudolabel", cmd_pseudolabel, "FedMLP: prototypes, learning degrees and the first missing-label detection")
    training_args(p)
    p.add_argument("--warmup-model", type=Path, required=True)
    p.add_argument("--out-artifact", type=Path, required=True, help="pseudolabels.json (training input; no hidden labels)")
    p.add_argument("--out-summary", type=Path, required=True, help="human-readable summary with diagnostics")
    compute_output(p)
    declare_paths(p, [*INPUTS, "--warmup-model"], ["--out-artifact", "--out-summary", "--out-compute"])

    p = add("teacher", cmd_teacher, "FedMLP stage 2: pseudo-labels and the global teacher, from the warm-up")
    training_args(p)
    resume_args(p)
    p.add_argument("--warmup-model", type=Path, required=True)
    p.add_argument("--warmup-rounds", type=Path, required=True)
    p.add_argument("--pseudolabels", type=Path, required=True)
    p.add_argument("--earlier-compute", type=Path, nargs="*", default=[],
                   help="the earlier stages' --out-compute files (warm-up, pseudolabel): added to this stage's passes in metrics.json's compute")
    outputs(p)
    scored_outputs(p)
    compute_output(p)
    p.add_argument("--out-diagnostics", type=Path, required=True)
    declare_paths(p, [*INPUTS, "--warmup-model", "--warmup-rounds", "--pseudolabels", "--earlier-compute"],
                  [*OUTPUTS, "--out-metrics", "--out-predictions", "--out-compute", "--out-diagnostics"], ["--live"])
