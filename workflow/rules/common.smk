# Shared helpers: config validation, path patterns, settings per rule, code fingerprints.
import os
import re
import json
import math
import shlex
import shutil
import sys
from pathlib import Path

from fedmlp.fingerprint import RULE_COMMANDS, TRAINING_RULES, code_fingerprint, rule_roots
from fedmlp.methods import registry
from fedmlp.sources import registry as sources
from fedmlp.sweep import federation_settings
from fedmlp import tuning

# Rules call `fedmlp` by name: take the one beside the Python that runs Snakemake, so that
# `.venv/bin/snakemake` works without activating the venv. The directory is not resolved (a venv's
# python is a symlink to the base interpreter, whose bin has no fedmlp). Jobs inherit this PATH; a
# rule's conda env (`--sdm conda`) is activated inside the job's shell, which puts its bin first,
# and cluster jobs re-run this file with the same interpreter. PATH is set here, not required from
# the user, so it is no `envvars:` entry (which would also ship this host's PATH to remote executors).
_BIN = str(Path(sys.executable).parent)
_PATH = os.environ.get("PATH", "")
if _PATH.split(os.pathsep)[0] != _BIN:
    os.environ.update(PATH=os.pathsep.join(filter(None, [_BIN, _PATH])))


configfile: "config/config.yaml"


def _check_schema():
    """The config files again, refusing a key repeated in one mapping (Snakemake's loader keeps the
    last); then the schema file plus the methods' own sections (fedmlp.schema), one line naming the key
    and the allowed values on a bad value; then the defaults are filled in."""
    from fedmlp.workflow_config import check_config_files, check_schema

    check_config_files(workflow.configfiles)
    check_schema(config, workflow.source_path("../schemas/config.schema.yaml"))  # also where a module is used from


_check_schema()

ENV = "../envs/fedmlp.yaml"  # relative to workflow/rules/

# Replicates (config key replicates): with "data", seed s trains on its own draw s of the data (the
# synthetic images, the split, the partition, each from its section's seed + s), under a draw<s>
# level; a real dataset's store is ingested once and shared by the draws. With "training", one draw
# for every seed, and the paths of before the key existed (DRAW and STORE_DRAW are empty).
DATA_REPLICATES = config["replicates"] == "data"
DRAW = "draw{draw}/" if DATA_REPLICATES else ""
SOURCE = sources.get(config["dataset"])  # what the rules know of the dataset (fedmlp.sources.registry)
SOURCE_SETTINGS = config[SOURCE.section]
STORE_DRAW = DRAW if SOURCE.arrives == "generated" else ""  # only generated data has its own store per draw

# Path patterns: each level names what the files below it depend on.
RAW_SYNTHETIC = f"resources/synthetic-ich/{DRAW}raw"
DOWNLOADED = "resources/{dataset}/raw/download.done"  # marker of a finished download
STORE = f"resources/{{dataset}}/{STORE_DRAW}store/{{prep}}"
SPLIT = f"results/runs/{{dataset}}/{{prep}}/{DRAW}split.json"
PARTITION = f"results/runs/{{dataset}}/{{prep}}/{DRAW}{{setting}}/partition.json"
RUN_ID = f"{{dataset}}/{{prep}}/{DRAW}{{setting}}/{{method}}/seed{{seed}}"
RUN = f"results/runs/{RUN_ID}"
WARMUP_ID = f"{{dataset}}/{{prep}}/{DRAW}{{setting}}/fedmlp-warmup/seed{{seed}}"  # shared by every fedmlp* method
WARMUP = f"results/runs/{WARMUP_ID}"
REPORT = os.path.normpath(config["report"]["dir"])  # the report rule's outputs (report.dir)

# Methods trained in stages (warmup → pseudolabel → teacher); all others go through rule train. A run's
# method may be a tuning grid point of a method, "rscfed@dist_scale=100" (fedmlp.tuning).
METHODS = registry.specs()
_POINT = f"(?:{re.escape(tuning.SEPARATOR)}{tuning.POINT_PATTERN})?"
_STAGED_NAMES = "|".join(re.escape(name) for name, spec in METHODS.items() if spec.staged)
_ONE_STAGE_NAMES = "|".join(re.escape(name) for name, spec in METHODS.items() if not spec.staged)
STAGED = f"(?:{_STAGED_NAMES}){_POINT}"
ONE_STAGE = f"(?:{_ONE_STAGE_NAMES}){_POINT}"
POINTS = {point.name: point for point in tuning.points(config)}
RUN_METHODS = tuning.run_methods(config)  # the methods' names in the runs' paths: grid points for a tuned method
FEDMLP = METHODS["fedmlp"].config  # the staged rules' settings (fedmlp.smk)


wildcard_constraints:
    dataset=r"[a-z0-9-]+",
    prep=r"(header|bsb|png)\d+",
    setting=r"[a-z0-9.-]+",
    method=rf"[a-z0-9+-]+{_POINT}",
    seed=r"\d+",
    draw=r"\d+",


def json_arg(value):
    """A config section as one JSON argument (also what Snakemake compares as a param). Like every
    value in a rule's shell command, it is quoted there: ``{params.x:q}`` (tests/test_workflow.py
    runs the workflow from a directory and on a dataset root whose names hold shell syntax)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# Each rule's code: the modules its command imports (fedmlp.fingerprint, whose table of the rules'
# commands the DVC stages' code dependencies follow too); training jobs add their method's.
CODE = {rule: code_fingerprint(*rule_roots(rule)) for rule in RULE_COMMANDS if rule not in TRAINING_RULES}


def method_code(method):
    """Training code of one method (or grid point): the training commands plus the method's own module."""
    return code_fingerprint(*rule_roots("train", METHODS[tuning.base_method(method)].module))


def method_settings(method):
    """The config section a method reads ({} for a method without settings), with a grid point's values."""
    section = METHODS[tuning.base_method(method)].section
    settings = config[section] if section else {}
    return tuning.apply(settings, POINTS[method].overrides) if method in POINTS else settings


def fedmlp_stage1():
    """The FedMLP keys the warm-up depends on (changing a stage-2 key keeps the warm-up)."""
    return {key: config["fedmlp"][key] for key in FEDMLP.STAGE1_KEYS}


def fedmlp_detection(method):
    """The FedMLP keys the first detection depends on (not the stage-2 loss weight or length)."""
    return {key: value for key, value in method_settings(method).items() if key not in FEDMLP.NOT_DETECTION_KEYS}


def drawn(section, wildcards):
    """A data section (synthetic, split, a federation setting) as the job's draw reads it: its seed
    plus the draw with data replicates, else the section as written (draw 0 is always the latter)."""
    if not DATA_REPLICATES:
        return section
    return {**section, "seed": section["seed"] + int(wildcards.draw)}


def run_identity(run):
    """What a run's metrics say about it (dataset, setting, method, seed): the report groups by it."""
    return json_arg({"dataset": run["dataset"], "setting": run["setting"], "method": run["method"], "seed": int(run["seed"])})


def training_runtime(rounds):
    """A training job's time limit in minutes (the cluster's runtime resource): its runs' rounds times
    cluster.minutes_per_round plus 30, doubled on each retry (the retry resumes after the last round)."""
    runs = len(config["seeds"]) if PACK else 1
    minutes = math.ceil(runs * rounds * config["cluster"]["minutes_per_round"]) + 30
    return lambda wildcards, attempt: minutes * 2 ** (attempt - 1)


def prep_name():
    size = config["preprocess"]["size"]
    return f"{SOURCE.fixed_prep or config['preprocess']['windowing']}{size}"


def settings():
    """Federation settings by name (fedmlp.sweep): the federation section, whose annotated_per_client
    may list several values, or one family per entry of sweep."""
    return {setting.name: setting for setting in federation_settings(config)}


SETTING_SOURCES = settings()
SETTINGS = {name: setting.federation for name, setting in SETTING_SOURCES.items()}


def check_config():
    """Fail before any work on settings the schema cannot express (the key is named)."""
    from fedmlp.config import SEED_MAX, FederationConfig, from_dict
    from fedmlp.errors import FedmlpError
    from fedmlp.partition import assign_classes
    from fedmlp.workflow_config import check_combinations

    dataset = config["dataset"]
    if SOURCE.check:
        SOURCE.check(SOURCE_SETTINGS)
    if dataset in USER_ROOT and SOURCE_SETTINGS["root"]:
        label_file = Path(SOURCE_SETTINGS["root"]) / SOURCE.layout[0]
        if not label_file.is_file():
            raise FedmlpError(
                f"config key '{SOURCE.section}.root': {label_file} not found (set it to an existing download, or null to download)"
            )
    if config["split"]["method"] == "official" and not SOURCE.official_split:
        having = ", ".join(name for name, source in sources.sources().items() if source.official_split)
        raise FedmlpError(f"config key 'split.method': 'official' exists for {having} only, not {dataset}")
    check_combinations(config)
    tuning.check(
        config,
        {name: spec.section for name, spec in METHODS.items()},
        {name: FEDMLP.STAGE1_KEYS for name, spec in METHODS.items() if spec.staged},
    )
    if DATA_REPLICATES:  # the last draw's seeds are the sections' seeds + the largest seed
        last = max(config["seeds"])
        sections = {"synthetic.seed": config["synthetic"], "split.seed": config["split"]}
        sections.update({setting.key("seed"): setting.federation for setting in SETTING_SOURCES.values()})
        for key, section in sections.items():
            if section["seed"] + last > SEED_MAX:
                raise FedmlpError(
                    f"config key '{key}': {section['seed']} + seed {last} exceeds {SEED_MAX} (replicates: data adds the seed)"
                )
    for name, setting in SETTING_SOURCES.items():
        if setting.federation["partition"] == "site":  # the clients and their classes come from the labels CSV
            if SOURCE.arrives != "user":
                raise FedmlpError(
                    f"config key '{setting.key('partition')}': site needs your own data (dataset custom: the sites of its labels CSV)"
                )
            continue
        try:
            assign_classes(classes(), from_dict(FederationConfig, setting.federation, "federation"))
        except FedmlpError as exc:
            if setting.source == "federation":
                raise
            raise FedmlpError(f"{exc} (setting {name}, from {setting.source})") from None


USER_ROOT = sources.named("downloaded")  # datasets a user may point at an existing download (<section>.root)


def raw_root(wildcards):
    """The raw directory of a job's dataset (and draw, for generated data)."""
    dataset = wildcards.dataset
    source = sources.get(dataset)
    if dataset in USER_ROOT and config[source.section]["root"]:
        return config[source.section]["root"]
    if source.raw:
        return source.raw(config[source.section])
    if source.arrives == "generated":
        return RAW_SYNTHETIC.format(**dict(wildcards.items()))
    return f"resources/{dataset}/raw"


def raw_inputs(wildcards):
    """The raw data an ingest needs: generated files, a finished download, or the user's own copy."""
    dataset = wildcards.dataset
    source = sources.get(dataset)
    if dataset in USER_ROOT and not config[source.section]["root"]:
        return {"raw": DOWNLOADED.format(dataset=dataset)}
    if source.inputs:  # the images are fingerprinted by a param (raw_fingerprint)
        return source.inputs(config[source.section])
    labels, images = source.layout
    root = raw_root(wildcards)
    return {"raw_labels": f"{root}/{labels}", "raw_images": f"{root}/{images}"}


def classes():
    return SOURCE.classes(SOURCE.parse(SOURCE_SETTINGS))


def source_settings(wildcards):
    """The config section the job's dataset's ingest reads ("{}" for one that reads none)."""
    source = sources.get(wildcards.dataset)
    return json_arg(config[source.section]) if source.ingest_reads_section else "{}"


def download_settings(wildcards):
    """The config section of the job's dataset, which its download reads."""
    return json_arg(config[sources.get(wildcards.dataset).section])


def raw_fingerprint(wildcards):
    """The fingerprint of the user's own images (paths, sizes, times; fedmlp.sources.custom), "" otherwise."""
    source = sources.get(wildcards.dataset)
    return source.fingerprint(config[source.section]) if source.fingerprint else ""


def store_files(pattern=STORE):
    return {
        "images": f"{pattern}/images.npy",
        "labels": f"{pattern}/labels.csv",
        "manifest": f"{pattern}/manifest.json",
        "candidates": f"{pattern}/candidates.txt",
    }


def uses_gpu():
    device = config["train"]["device"]
    return device == "cuda" or (device == "auto" and shutil.which("nvidia-smi") is not None)


GPU = 1 if uses_gpu() else 0


def final_files(name, methods=None):
    """A file of every run the report collects; with data replicates, the run of seed s is on draw s."""
    methods = RUN_METHODS if methods is None else methods
    dataset, prep = config["dataset"], prep_name()
    return [
        f"{RUN}/{name}".format(dataset=dataset, prep=prep, setting=setting, method=method, seed=seed, draw=seed)
        for setting in SETTINGS
        for method in methods
        for seed in config["seeds"]
    ]


def staged_methods():
    return [m for m in RUN_METHODS if METHODS[tuning.base_method(m)].staged]


# Packed training (config key pack_seeds): a training job runs every seed of its method and setting
# in one process (`fedmlp pack`), else its own seed only. The rules are written once for both: a
# per-run file is per_run(pattern), one file per seed when packed; a per-job file (the benchmark) is
# per_job(pattern); the runs' commands come from seed_runs, one wildcard mapping per run.
PACK = config["pack_seeds"]


def per_run(pattern):
    """A file each run of a job writes: the pattern itself (a job per seed) or one per seed (packed)."""
    if not PACK:
        return pattern
    return [pattern.replace("{seed}", str(seed)).replace("{draw}", str(seed)) for seed in config["seeds"]]


def per_run_directory(pattern):
    """per_run for a directory output."""
    return [directory(path) for path in per_run(pattern)] if PACK else directory(pattern)


def per_job(pattern):
    """A file each job writes once (its benchmark): per seed, or per method and setting when packed."""
    return pattern.replace(DRAW, "").replace("seed{seed}", "seeds") if PACK else pattern


def run_store_files():
    """store_files of each run of a job (its draw's store with data replicates)."""
    return {name: per_run(pattern) for name, pattern in store_files().items()}


def seed_runs(wildcards):
    """The runs of a job as wildcard mappings: every seed on its draw (packed) or the job's own."""
    job = dict(wildcards.items())
    if not PACK:
        return [job]
    return [{**job, "seed": str(seed), "draw": str(seed)} for seed in config["seeds"]]


def packed_commands(command, log):
    """The param holding a job's runs for `fedmlp pack --runs`: command(run) gives one run's fedmlp
    arguments; each run's output and errors go to its own log (log: a pattern)."""

    def runs(wildcards):
        return json_arg([{"argv": command(run), "log": log.format(**run)} for run in seed_runs(wildcards)])

    return runs


def resume_path(rule, pattern, run):
    """Where a training run keeps its between-rounds state: outside the job's declared outputs, so
    that Snakemake's cleanup of incomplete outputs keeps it and a rerun continues (fedmlp.resume)."""
    return f"resume/{rule}/{pattern.format(**run)}.pt"


def arguments(options):
    """Command-line arguments from {option: value} (a list value gives the option several values)."""
    return [item for option, value in options.items() for item in (option, *(value if isinstance(value, list) else [value]))]


def training_options(run, method, method_settings_json):
    """The options every training command takes, for one run of a method (a registered one: a grid
    point's values come with its settings)."""
    return {
        "--store": STORE.format(**run),
        "--partition": PARTITION.format(**run),
        "--method": method,
        "--seed": run["seed"],
        "--train": json_arg(config["train"]),
        "--model": json_arg(config["model"]),
        "--method-settings": method_settings_json,
    }


# The fedmlp command of one run, for each training rule; run is the run's wildcards (seed_runs).
def at(pattern, run):
    return pattern.format(**run)


def train_command(run):
    """`fedmlp train` with the seed's store, partition and outputs."""
    method = run["method"]
    options = training_options(run, tuning.base_method(method), json_arg(method_settings(method)))
    return ["train"] + arguments(
        {
            **options,
            "--run": run_identity(run),
            "--out-model": at(f"{RUN}/model.pt", run),
            "--out-rounds": at(f"{RUN}/rounds.csv", run),
            "--live": at(f"{RUN}/live", run),
            "--out-metrics": at(f"{RUN}/metrics.json", run),
            "--out-predictions": at(f"{RUN}/predictions.csv", run),
            "--resume-state": resume_path("train", RUN_ID, run),
        }
    )


def warmup_command(run):
    options = training_options(run, "fedmlp", json_arg(fedmlp_stage1()))
    return ["warmup"] + arguments(
        {
            **options,
            "--out-model": at(f"{WARMUP}/model.pt", run),
            "--out-rounds": at(f"{WARMUP}/rounds.csv", run),
            "--out-compute": at(f"{WARMUP}/compute.json", run),
            "--live": at(f"{WARMUP}/live", run),
            "--resume-state": resume_path("warmup", WARMUP_ID, run),
        }
    )


def pseudolabel_command(run):
    method = run["method"]
    options = training_options(run, tuning.base_method(method), json_arg(fedmlp_detection(method)))
    return ["pseudolabel"] + arguments(
        {
            **options,
            "--warmup-model": at(f"{WARMUP}/model.pt", run),
            "--out-artifact": at(f"{RUN}/pseudolabels.json", run),
            "--out-summary": at(f"{RUN}/pseudolabels.md", run),
            "--out-compute": at(f"{RUN}/pseudolabel-compute.json", run),
        }
    )


def teacher_command(run):
    method = run["method"]
    options = training_options(run, tuning.base_method(method), json_arg(method_settings(method)))
    return ["teacher"] + arguments(
        {
            **options,
            "--warmup-model": at(f"{WARMUP}/model.pt", run),
            "--warmup-rounds": at(f"{WARMUP}/rounds.csv", run),
            "--pseudolabels": at(f"{RUN}/pseudolabels.json", run),
            "--earlier-compute": [at(f"{WARMUP}/compute.json", run), at(f"{RUN}/pseudolabel-compute.json", run)],
            "--run": run_identity(run),
            "--out-model": at(f"{RUN}/model.pt", run),
            "--out-rounds": at(f"{RUN}/rounds.csv", run),
            "--live": at(f"{RUN}/live", run),
            "--out-diagnostics": at(f"{RUN}/diagnostics.csv", run),
            "--out-metrics": at(f"{RUN}/metrics.json", run),
            "--out-predictions": at(f"{RUN}/predictions.csv", run),
            "--resume-state": resume_path("teacher", RUN_ID, run),
        }
    )


def parent_of(name):
    """A param giving the directory of input or output ``name`` (a store, the raw dataset)."""

    def parent(wildcards, input, output):
        files = {**dict(input.items()), **dict(output.items())}
        return os.path.dirname(files[name])

    return parent


check_config()  # last: it uses the helpers above
