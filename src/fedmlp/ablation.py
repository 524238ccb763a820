"""FedMLP's ablation (docs/method.md, "Ablation"): arms that change ``fedmlp.*`` keys, each trained
through the real workflow, then one table comparing them, paired by seed (``scripts/ablation``).

All arms share one work directory, so the store, split and partition are made once. The arms run one
after another, each a Snakemake run of ``fedmlp`` (and the baselines, trained once) with the arm's
``fedmlp`` section; its runs' files are copied into ``<workdir>/ablation/runs/<arm>/`` before the
next arm overwrites them. Snakemake reruns only what an arm's keys reach (``STAGE1_KEYS`` and
``NOT_DETECTION_KEYS`` of :class:`~fedmlp.methods.fedmlp.FedMLPConfig`), and the arms are ordered so
that arms sharing a warm-up (then a first detection) run back to back: a warm-up is trained once per
distinct set of stage-1 keys. An arm whose copied files match its config is not run again.

The ablation file (``config/ablation.yaml``)::

    base: config/config.yaml     # the experiment the arms vary (relative to the repository)
    overrides: {}                # deep-merged into base (e.g. smaller data for a smoke run)
    seeds: [0, 1, 2, 3, 4]
    baselines: [fedavg-masked, fedavg-partial]
    reference: default           # the arm every other is compared with (and fedavg-masked, if a baseline)
    arms: [{name: default, fedmlp: {}}, {name: no-pseudo, fedmlp: {tau0: {max: 0.0}, tau1: {max: 0.0}}}, ...]
    estimate: {data: 60, warmup: 22, pseudolabel: 4, teacher: 25, train: 25}  # CPU-s per job of the default

An arm's FedMLP trains ``train.rounds`` like the baselines: an arm setting ``warmup_rounds`` leaves
stage 2 ``train.rounds − warmup_rounds`` rounds (one round budget per experiment). Test mAP is the final round's; validation mAP (the final round's
``val_mAP`` in the metrics' rounds, else ``best_val``) is shown where the runs have it, and is what
anything tuned must be chosen on.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedmlp.errors import FedmlpError

METHOD = "fedmlp"
MASKED = "fedavg-masked"
COPIED = ("metrics.json", "rounds.csv", "diagnostics.csv", "pseudolabels.md")  # of each run, where present
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
ESTIMATE = {"data": 60.0, "warmup": 22.0, "pseudolabel": 4.0, "teacher": 25.0, "train": 25.0}
DEFAULT_ROUNDS = {"warmup": 8, "teacher": 12, "train": 20}  # the rounds the per-job estimates were measured at


@dataclass
class Arm:
    name: str
    changes: dict[str, Any]  # the arm's fedmlp keys as written
    config: dict[str, Any]  # the whole workflow config of its Snakemake run (defaults filled in)

    @property
    def fedmlp(self) -> dict[str, Any]:
        return self.config["fedmlp"]


@dataclass
class Plan:
    workdir: Path
    repo: Path
    seeds: list[int]
    baselines: list[str]
    reference: str
    arms: list[Arm]  # in run order
    estimate: dict[str, float]
    base: dict[str, Any]  # the base config (defaults filled in), methods and seeds aside

    @property
    def out(self) -> Path:
        return self.workdir / "ablation"


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def set_dotted(config: dict[str, Any], assignment: str) -> None:
    """``--set train.rounds=2``: the value is read as YAML."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise FedmlpError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.rounds=2")
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise FedmlpError(f"--set {assignment!r}: {part!r} is not a section")
    node[last] = yaml.safe_load(text)


def checked_config(config: dict[str, Any], repo: Path, what: str) -> dict[str, Any]:
    """The workflow's own checks (schema, defaults, combinations), before any work."""
    from fedmlp.workflow_config import check_combinations, check_schema

    config = copy.deepcopy(config)
    try:
        check_schema(config, repo / "workflow" / "schemas" / "config.schema.yaml")
        check_combinations(config)
    except FedmlpError as error:
        raise FedmlpError(f"{what}: {error}") from None
    return config


def signature(fedmlp: dict[str, Any], keys: Any) -> str:
    return json.dumps({k: fedmlp[k] for k in keys}, sort_keys=True)


def stage_signatures(fedmlp: dict[str, Any]) -> tuple[str, str]:
    """What the arm's warm-up and first detection depend on (the workflow passes them only these)."""
    from fedmlp.methods.fedmlp import FedMLPConfig

    detection = [k for k in fedmlp if k not in FedMLPConfig.NOT_DETECTION_KEYS]
    return signature(fedmlp, FedMLPConfig.STAGE1_KEYS), signature(fedmlp, detection)


def run_order(arms: list[Arm]) -> list[Arm]:
    """Arms sharing a warm-up back to back, and within those the ones sharing a first detection,
    each group where its first arm was listed (the reference first when it is listed first)."""
    first: dict[str, int] = {}
    keys = []
    for index, arm in enumerate(arms):
        stage1, detection = stage_signatures(arm.fedmlp)
        keys.append((first.setdefault(stage1, index), first.setdefault(stage1 + detection, index), index))
    return [arm for _, arm in sorted(zip(keys, arms), key=lambda pair: pair[0])]


def load_plan(path: Path, workdir: Path, repo: Path, sets: list[str] = ()) -> Plan:
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or not isinstance(spec.get("arms"), list) or not spec["arms"]:
        raise FedmlpError(f"{path}: expected a mapping with a list of arms")
    unknown = set(spec) - {"base", "overrides", "seeds", "baselines", "reference", "arms", "estimate"}
    if unknown:
        raise FedmlpError(f"{path}: unknown key {sorted(unknown)[0]!r}")
    base = yaml.safe_load((repo / spec.get("base", "config/config.yaml")).read_text())
    base = deep_merge(base, spec.get("overrides") or {})
    for assignment in sets:
        set_dotted(base, assignment)
    seeds = list(spec.get("seeds", base.get("seeds", [0])))
    baselines = list(spec.get("baselines", [MASKED]))
    if METHOD in baselines:
        raise FedmlpError(f"{path}: baselines: {METHOD} is what the arms vary; list other methods")
    checked_base = checked_config({**base, "methods": baselines or [MASKED], "seeds": seeds}, repo, f"{path}: base")
    arms, names = [], set()
    for entry in spec["arms"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not NAME.match(entry["name"]):
            raise FedmlpError(f"{path}: every arm needs a name of letters, digits, '.', '_', '+' or '-' (got {entry!r})")
        name, changes = entry["name"], entry.get("fedmlp") or {}
        if name in names or name in baselines:
            raise FedmlpError(f"{path}: arm name {name!r} used twice (or a baseline's name)")
        if set(entry) - {"name", "fedmlp"}:
            raise FedmlpError(f"{path}: arm {name}: unknown key {sorted(set(entry) - {'name', 'fedmlp'})[0]!r} (arms change fedmlp keys only)")
        names.add(name)
        fedmlp = deep_merge(checked_base["fedmlp"], changes)
        config = checked_config({**base, "methods": [METHOD, *baselines], "seeds": seeds, "fedmlp": fedmlp}, repo, f"{path}: arm {name}")
        arms.append(Arm(name, changes, config))
    reference = spec.get("reference", arms[0].name)
    if reference not in names:
        raise FedmlpError(f"{path}: reference {reference!r} is not an arm")
    estimate = {**ESTIMATE, **(spec.get("estimate") or {})}
    shared = {k: v for k, v in checked_base.items() if k not in ("methods", "seeds", "fedmlp")}
    return Plan(workdir, repo, seeds, baselines, reference, run_order(arms), estimate, shared)


# ---------------------------------------------------------------------------------------------
# Cost


def estimate_jobs(plan: Plan, done: set[str] = frozenset()) -> list[tuple[str, str, int, float]]:
    """(arm, job kind, jobs, CPU-s) of what the plan still has to train, from the per-job estimates
    of the default experiment, scaled by rounds (warm-up and stage-2 jobs) and seeds."""
    n = len(plan.seeds)
    est, rounds = plan.estimate, DEFAULT_ROUNDS
    draws = n if plan.base["replicates"] == "data" else 1  # replicates: data draws the data once per seed
    rows = [("(shared)", "data (synthesize, ingest, split, partition)", 4 * draws, draws * est["data"])]
    train_rounds = plan.base["train"]["rounds"]
    rows += [(b, "train", n, n * est["train"] * train_rounds / rounds["train"]) for b in plan.baselines]
    warmups, detections = set(), set()
    for arm in plan.arms:
        stage1, detection = stage_signatures(arm.fedmlp)
        if stage1 not in warmups:
            warmups.add(stage1)
            rows.append((arm.name, "warmup", n, n * est["warmup"] * arm.fedmlp["warmup_rounds"] / rounds["warmup"]))
        if stage1 + detection not in detections:
            detections.add(stage1 + detection)
            rows.append((arm.name, "pseudolabel", n, n * est["pseudolabel"]))
        if arm.name not in done:
            rows.append((arm.name, "teacher", n, n * est["teacher"] * (train_rounds - arm.fedmlp["warmup_rounds"]) / rounds["teacher"]))
    return rows


def estimate_text(plan: Plan, cores: int) -> str:
    rows = estimate_jobs(plan)
    jobs, cpu = sum(r[2] for r in rows), sum(r[3] for r in rows)
    warmups = sum(r[2] for r in rows if r[1] == "warmup")
    teachers = sum(r[2] for r in rows if r[1] == "teacher")
    lines = [f"{len(plan.arms)} arms × {len(plan.seeds)} seeds = {len(plan.arms) * len(plan.seeds)} FedMLP runs "
             f"({warmups} warm-up, {sum(r[2] for r in rows if r[1] == 'pseudolabel')} pseudolabel and {teachers} stage-2 jobs) "
             f"+ {len(plan.baselines) * len(plan.seeds)} baseline runs: {jobs} jobs, about {cpu:,.0f} CPU-s "
             f"(≈ {cpu / 60:.0f} CPU-min; ≈ {cpu / 60 / max(cores, 1):.0f} min of wall time on {cores} cores), "
             "from per-job estimates of the default experiment at bf16 (ablation file, 'estimate'), scaled by rounds."]
    lines += [f"  {arm:<22} {kind:<44} {n:>3} jobs {seconds:>8,.0f} CPU-s" for arm, kind, n, seconds in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Running


def arm_record(plan: Plan, arm: Arm) -> dict[str, Any]:
    return {"name": arm.name, "changes": arm.changes, "fedmlp": arm.fedmlp, "seeds": plan.seeds}


def runs_of(root: Path, method: str, seeds: list[int], replicates: str) -> dict[tuple[str, int], Path]:
    """(setting, seed) → run directory, for the runs of ``method`` under ``root`` (results/runs or a
    copy): <dataset>/<prep>/<setting>/..., with replicates: data <dataset>/<prep>/draw<seed>/<setting>/...."""
    found = {}
    for seed in seeds:
        draw = f"draw{seed}/" if replicates == "data" else ""
        for metrics in sorted(root.glob(f"*/*/{draw}*/{method}/seed{seed}/metrics.json")):
            found[(metrics.parents[2].name, seed)] = metrics.parent
    return found


def copied_runs(plan: Plan, name: str) -> dict[tuple[str, int], Path]:
    found = {}
    for seed in plan.seeds:
        for metrics in sorted((plan.out / "runs" / name).glob(f"*/seed{seed}/metrics.json")):
            found[(metrics.parents[1].name, seed)] = metrics.parent
    return found


def is_done(plan: Plan, arm: Arm) -> bool:
    record = plan.out / "runs" / arm.name / "arm.json"
    if not record.is_file() or json.loads(record.read_text()) != json.loads(json.dumps(arm_record(plan, arm))):
        return False
    return {seed for _, seed in copied_runs(plan, arm.name)} == set(plan.seeds)


def copy_runs(plan: Plan, method: str, name: str) -> int:
    """Copy the work directory's runs of ``method`` into ``ablation/runs/<name>/<setting>/seed<s>/``."""
    runs = runs_of(plan.workdir / "results" / "runs", method, plan.seeds, plan.base["replicates"])
    for (setting, seed), source in runs.items():
        target = plan.out / "runs" / name / setting / f"seed{seed}"
        target.mkdir(parents=True, exist_ok=True)
        for file in COPIED:
            if (source / file).is_file():
                shutil.copy2(source / file, target / file)
    return len(runs)


def check_workdir(plan: Plan) -> None:
    """One work directory per base experiment: its runs are found by method and seed alone."""
    marker = plan.out / "base.json"
    text = json.dumps(plan.base, sort_keys=True, indent=1)
    if marker.is_file() and marker.read_text() != text:
        raise FedmlpError(f"{plan.workdir}: holds an ablation of another base experiment ({marker}); use another --workdir")
    plan.out.mkdir(parents=True, exist_ok=True)
    marker.write_text(text)


def snakemake(plan: Plan, config_path: Path, log_path: Path, cores: int) -> None:
    exe = Path(sys.executable).parent / "snakemake"
    command = [str(exe if exe.exists() else "snakemake"), "--snakefile", str(plan.repo / "workflow" / "Snakefile"),
               "--directory", str(plan.workdir), "--configfile", str(config_path), "--cores", str(cores),
               "--workflow-profile", str(plan.repo / "profiles" / "default"), "--until", "train", "teacher"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", "FEDMLP_PROGRESS": "0"}
    with log_path.open("w") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if result.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
        raise FedmlpError(f"snakemake failed for {config_path.stem} (exit {result.returncode}); its output is in {log_path}:\n{tail}")


def run_plan(plan: Plan, cores: int, echo=print) -> None:
    check_workdir(plan)
    for directory in ("configs", "logs", "runs"):
        (plan.out / directory).mkdir(exist_ok=True)
    for arm in plan.arms:
        if is_done(plan, arm) and all(copied_runs(plan, b) for b in plan.baselines):
            echo(f"ablation: {arm.name}: done before, kept ({plan.out / 'runs' / arm.name})")
            continue
        config_path = plan.out / "configs" / f"{arm.name}.yaml"
        config_path.write_text(yaml.safe_dump(arm.config, sort_keys=False))
        started = time.monotonic()
        echo(f"ablation: {arm.name}: {json.dumps(arm.changes) if arm.changes else 'the base config'} ...")
        snakemake(plan, config_path, plan.out / "logs" / f"{arm.name}.log", cores)
        shutil.rmtree(plan.out / "runs" / arm.name, ignore_errors=True)
        copied = copy_runs(plan, METHOD, arm.name)
        for baseline in plan.baselines:  # trained by the first arm's run; up to date afterwards
            copy_runs(plan, baseline, baseline)
        (plan.out / "runs" / arm.name / "arm.json").write_text(json.dumps(arm_record(plan, arm), indent=1) + "\n")
        echo(f"ablation: {arm.name}: {copied} runs in {time.monotonic() - started:.0f} s")


# ---------------------------------------------------------------------------------------------
# The table


def _val_mAP(metrics: dict[str, Any]) -> float:
    """The final round's validation mAP, else best_val's; NaN without a validation set."""
    values = metrics.get("rounds", {}).get("val_mAP")
    if values and values[-1] is not None and math.isfinite(values[-1]):
        return float(values[-1])
    best = metrics.get("best_val") or {}
    value = best.get("val_mAP")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else float("nan")


def collect(plan: Plan):
    """Long-form results (setting, method, seed, metric, value) and the pooled diagnostics of the
    last stage-2 round (setting, method, seed, counts and rates) of every arm and baseline."""
    import pandas as pd

    from fedmlp.report import pooled_diagnostics

    rows, diagnostics, warned = [], [], set()
    for name in [arm.name for arm in plan.arms] + plan.baselines:
        for (setting, seed), run in copied_runs(plan, name).items():
            metrics = json.loads((run / "metrics.json").read_text())
            rows += [{"setting": setting, "method": name, "seed": seed, "metric": "mAP", "value": metrics["overall"]["mAP"]},
                     {"setting": setting, "method": name, "seed": seed, "metric": "val_mAP", "value": _val_mAP(metrics)}]
            if metrics.get("warnings"):
                warned.add(name)
            if (run / "diagnostics.csv").is_file():
                table = pd.read_csv(run / "diagnostics.csv")
                if not table.empty:
                    pooled = pooled_diagnostics(table)
                    last = pooled[pooled["round"] == pooled["round"].max()].iloc[0].to_dict()
                    diagnostics.append({**last, "setting": setting, "method": name, "seed": seed})
    return pd.DataFrame(rows, columns=["setting", "method", "seed", "metric", "value"]), pd.DataFrame(diagnostics), warned


def _mean_sd(values) -> str:
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    mean = sum(values) / len(values)
    return f"{mean:.3f} ± {math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)):.3f}"


def _difference(result) -> tuple[str, str]:
    if result is None:
        return "—", "—"
    if result.low != result.low:
        return (f"{result.mean:+.3f}" if result.mean == result.mean else "n/a"), "n/a"
    return f"{result.mean:+.3f} [{result.low:+.3f}, {result.high:+.3f}]", f"{result.p_holm:.2g}"


def table_markdown(plan: Plan, results, diagnostics, warned: set[str]) -> str:
    from fedmlp.statistics import compare_to

    out = [f"# FedMLP ablation ({len(plan.seeds)} seeds: {', '.join(map(str, plan.seeds))})", "",
           "Test mAP of the final round, mean ± sample SD over seeds; validation mAP likewise (final round) where the runs "
           "have a validation set: **choose on validation, never on test** (the Δ val column is the one to decide by). "
           "Differences are paired by seed, with the 95 % "
           "t interval and the two-sided paired t-test's p, Holm-adjusted over the arms (and baselines) compared with "
           "the same reference. Pseudo-labels: the last stage-2 round, pooled over clients and classes, mean over seeds "
           "(precision against the hidden labels; recall of the hidden positives).", ""]
    arms = {arm.name: arm for arm in plan.arms}
    names = [arm.name for arm in plan.arms if arm.name == plan.reference] + [a.name for a in plan.arms if a.name != plan.reference]
    for setting, block in results.groupby("setting", sort=False):
        versus = {ref: {r.method: r for r in compare_to(block, ref, "mAP")} for ref in (plan.reference, MASKED)}
        versus_val = {r.method: r for r in compare_to(block, plan.reference, "val_mAP")}
        header = ["arm", "changes", "seeds", "test mAP", "val mAP", f"Δ test vs {plan.reference} [95 % CI]", "p (Holm)",
                  f"Δ val vs {plan.reference} [95 % CI]", "p (Holm)", f"Δ test vs {MASKED} [95 % CI]", "p (Holm)",
                  "pseudo-pos", "prec pos", "pseudo-neg", "prec neg", "recall pos"]
        rows = []
        for name in names + plan.baselines:
            sub = block[block["method"] == name]
            if sub.empty:
                continue
            test = sub.loc[sub["metric"] == "mAP", "value"].tolist()
            val = sub.loc[sub["metric"] == "val_mAP", "value"].tolist()
            d = diagnostics[(diagnostics["setting"] == setting) & (diagnostics["method"] == name)] if len(diagnostics) else diagnostics
            pseudo = ["—"] * 5
            if len(d):
                pseudo = [f"{d['selected_positive'].mean():.0f}", _mean_sd(d["precision_positive"].tolist()),
                          f"{d['selected_negative'].mean():.0f}", _mean_sd(d["precision_negative"].tolist()),
                          _mean_sd(d["recall_positive"].tolist())]
            label = f"{name} †" if name in warned else name
            changes = "baseline" if name not in arms else (json.dumps(arms[name].changes, separators=(", ", ": ")) if arms[name].changes else "—")
            changes = changes.replace("|", "\\|")
            rows.append([label, changes, str(len(test)), _mean_sd(test), _mean_sd(val),
                         *_difference(versus[plan.reference].get(name)), *_difference(versus_val.get(name)),
                         *_difference(versus[MASKED].get(name)), *pseudo])
        out += [f"## {setting}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in rows]
        out.append("")
    if warned:
        out += ["† Diagnostic, not a method: " + ", ".join(sorted(warned)) + " trained on hidden labels (oracle pseudo-labels; "
                "the runs' metrics.json carry the warning).", ""]
    return "\n".join(out)


def write_table(plan: Plan) -> Path:
    results, diagnostics, warned = collect(plan)
    if results.empty:
        raise FedmlpError(f"{plan.out / 'runs'}: no runs to tabulate (run the arms first)")
    results.to_csv(plan.out / "ablation.csv", index=False)
    if len(diagnostics):
        diagnostics.to_csv(plan.out / "pseudolabels.csv", index=False)
    path = plan.out / "ablation.md"
    path.write_text(table_markdown(plan, results, diagnostics, warned))
    return path


def main(argv: list[str] | None = None, repo: Path | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ablation", description="FedMLP's ablation through the workflow (docs/method.md, Ablation).")
    parser.add_argument("--arms", type=Path, default=Path("config/ablation.yaml"), help="the ablation file (default config/ablation.yaml)")
    parser.add_argument("--workdir", type=Path, default=Path("ablation-work"),
                        help="the work directory of the arms' Snakemake runs (one per base experiment; default ablation-work)")
    parser.add_argument("--cores", type=int, default=2, help="Snakemake's --cores")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="change a base config key for every arm (YAML value, dotted key), e.g. --set train.rounds=4")
    parser.add_argument("--dry-run", action="store_true", help="print the arms in run order and the estimate; run nothing")
    parser.add_argument("--table-only", action="store_true", help="write the table from the runs copied so far; run nothing")
    args = parser.parse_args(argv)
    repo = (repo or Path.cwd()).resolve()
    try:
        plan = load_plan(args.arms, args.workdir.resolve(), repo, args.sets)
        print(estimate_text(plan, args.cores))
        print("run order: " + ", ".join(arm.name for arm in plan.arms))
        if args.dry_run:
            return 0
        if not args.table_only:
            run_plan(plan, args.cores)
        print(f"ablation: table in {write_table(plan)}")
    except FedmlpError as error:
        print(f"ablation: error: {error}", file=sys.stderr)
        return 2
    return 0
