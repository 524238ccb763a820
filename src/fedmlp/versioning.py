"""DVC's view of the workflow: the stages of ``dvc.yaml``, derived from the rules' code fingerprints,
and a fetch that says in one line when the remote lacks what ``dvc.lock`` records, or holds a
damaged copy of it (every fetched file is checked against dvc.lock's MD5 before anything is checked out).

Snakemake decides what to recompute; DVC versions and stores the results in three coarse stages,
each one Snakemake run (README, "Reproducibility"). A stage's code dependencies are the source files
of the modules its rules' commands import: the closure that also fingerprints those rules
(:mod:`fedmlp.fingerprint`), so editing a module that no stage runs (the Flower deployment, the
benchmark) changes no stage, and the two can never disagree. ``fedmlp dvc-yaml`` writes dvc.yaml
from here; ``--check`` fails when the file disagrees (tests/test_dvc.py runs it).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from fedmlp import fingerprint
from fedmlp.errors import FedmlpError, one_line

PARAMS_FILE = "config/config.yaml"
WORKFLOW = "workflow"  # workflow/Snakefile, the rules and the schema: they shape every stage's jobs
SRC = "src/fedmlp"  # where the package's modules are in the repository

STAGE_RULES = {
    "data": ("synthesize", "download", "ingest"),
    "experiments": ("split", "partition", "train", "warmup", "pseudolabel", "teacher"),
    "report": ("report",),
}
COMMANDS = {  # each stage runs its part of the DAG; Snakemake skips what is up to date
    "data": "snakemake --cores all --until ingest",
    "experiments": "snakemake --cores all --omit-from report",
    "report": "snakemake --cores all",
}
# Config sections each stage's jobs read (the experiments add every method's own section), and the
# report's: which runs it collects and where it writes (report.dir; the stage's outputs are the
# default's, results/). replicates and seeds reach the data: with replicates: data each seed has its
# own draw (resources/synthetic-ich/draw<s>/), and every stage's paths name it.
PARAMS = {
    "data": ("dataset", "seeds", "replicates", "preprocess"),  # and every source's own sections (fedmlp.sources.registry)
    "experiments": ("methods", "seeds", "replicates", "split", "federation", "sweep", "model", "train", "tuning"),
    "report": ("dataset", "methods", "seeds", "replicates", "preprocess", "federation", "sweep", "report", "tuning"),
}
NOT_RESULTS = ("cluster", "pack_seeds")  # how jobs are scheduled and run, never what they compute
STAGE_DEPS = {"experiments": ("resources",), "report": ("results/runs",)}  # the previous stage's outputs
# persist: DVC leaves the outputs in place when it reruns a stage, so that Snakemake reruns only the
# jobs whose inputs changed (DVC alone would delete the directory and recompute every job).
OUTS = {
    "data": [{"resources": {"persist": True}}],
    "experiments": [{"results/runs": {"persist": True}}],
    "report": [{path: {"persist": True}} for path in
               ("results/summary.csv", "results/report.md", "results/report.html", "results/table.tex", "results/figures",
                "results/plots")],
}
METRICS = {"report": [{"results/metrics.json": {"persist": True}}]}
PLOTS = [
    {"results/plots/map_per_round.csv": {"x": "round", "y": "test_mAP", "template": "per_method",
                                         "title": "test mAP per round (mean over seeds)", "x_label": "round", "y_label": "test mAP"}},
    "results/figures",
]
HEADER = """\
# Written by `fedmlp dvc-yaml` (src/fedmlp/versioning.py); do not edit by hand: change that module, run
# `fedmlp dvc-yaml`, and commit both (tests/test_dvc.py fails when this file disagrees with the code).
# DVC is the version and storage layer; Snakemake stays the scheduler. Each stage's command is a
# Snakemake run; a stage's code dependencies are the files its rules' code fingerprints cover.
# `make push` records and uploads the outputs, `make pull` downloads them into a fresh clone and
# marks them up to date (README, "Reproducibility").
"""


def method_sections() -> list[str]:
    """The config sections of all registered methods (a method's jobs read its own)."""
    from fedmlp.methods import registry

    return sorted({spec.section for spec in registry.specs().values() if spec.section})


def stage_params(stage: str) -> list[str]:
    from fedmlp.sources.registry import data_sections

    extra = method_sections() if stage == "experiments" else data_sections() if stage == "data" else []
    return [*PARAMS[stage], *extra]


def code_files(stage: str) -> list[str]:
    """Repository paths of the modules the stage's rules run, as their code fingerprints cover them."""
    from fedmlp.methods import registry

    methods = [spec.module for spec in registry.specs().values()]
    roots = sorted({root for rule in STAGE_RULES[stage] for root in fingerprint.rule_roots(rule, *methods)})
    return sorted(f"{SRC}/{path.relative_to(fingerprint.SRC).as_posix()}" for path in fingerprint.code_files(*roots))


def document() -> dict[str, Any]:
    """dvc.yaml as data."""
    stages = {}
    for stage in STAGE_RULES:
        entry: dict[str, Any] = {
            "cmd": COMMANDS[stage],
            "deps": [WORKFLOW, *STAGE_DEPS.get(stage, ()), *code_files(stage)],
            "params": [{PARAMS_FILE: stage_params(stage)}],
            "outs": OUTS[stage],
        }
        if stage in METRICS:
            entry["metrics"] = METRICS[stage]
        stages[stage] = entry
    return {"stages": stages, "plots": PLOTS}


def render() -> str:
    return HEADER + yaml.safe_dump(document(), sort_keys=False, default_flow_style=False, width=120)


def check(path: Path) -> None:
    """One line naming the first stage and key where ``path`` differs from :func:`document`."""
    try:
        found = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FedmlpError(f"{path}: {one_line(exc)}") from None
    wanted = document()
    found = found if isinstance(found, dict) else {}
    for stage, entry in wanted["stages"].items():
        have = (found.get("stages") or {}).get(stage)
        if not isinstance(have, dict):
            raise FedmlpError(f"{path}: stage {stage!r} is missing; run 'fedmlp dvc-yaml' and commit dvc.yaml")
        for key, value in entry.items():
            if have.get(key) != value:
                extra, lacking = _difference(have.get(key), value)
                raise FedmlpError(f"{path}: stages.{stage}.{key} disagrees with the code (has {extra or 'nothing extra'}, "
                                  f"lacks {lacking or 'nothing'}); run 'fedmlp dvc-yaml' and commit dvc.yaml")
    for key in ("stages", "plots"):
        if found.get(key) != wanted[key]:
            raise FedmlpError(f"{path}: {key} disagrees with the code; run 'fedmlp dvc-yaml' and commit dvc.yaml")


def _difference(have: Any, want: Any) -> tuple[str, str]:
    def items(value: Any) -> list[str]:
        if isinstance(value, list):
            return [json.dumps(v, sort_keys=True) if not isinstance(v, str) else v for v in value]
        return [] if value is None else [json.dumps(value, sort_keys=True)]

    have_items, want_items = items(have), items(want)
    return (", ".join(v for v in have_items if v not in want_items), ", ".join(v for v in want_items if v not in have_items))


def run_dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    except FileNotFoundError:
        raise FedmlpError("dvc: not found on the PATH (it comes with the test extras: pip install -e '.[test]')") from None


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {result.returncode}"


def default_remote(root: Path) -> tuple[str, str]:
    """The default DVC remote's name and URL (project config with its local overrides)."""
    name = run_dvc(root, "remote", "default")
    if name.returncode != 0 or not name.stdout.strip():
        raise FedmlpError("no default DVC remote is set: add the one the outputs were pushed to with "
                          "'dvc remote add -d NAME URL', or run 'make run' to compute them here")
    remote = name.stdout.strip()
    url = run_dvc(root, "config", f"remote.{remote}.url")
    return remote, url.stdout.strip() if url.returncode == 0 and url.stdout.strip() else "?"


def fetch_outputs(root: Path) -> list[str]:
    """``dvc fetch`` the outputs dvc.lock records into the DVC cache (the workspace is not touched),
    then fail in one line if any of them is still not there: the remote lacks it. Returns the outputs
    fetched, for ``dvc checkout`` to put in place."""
    remote, url = default_remote(root)
    fetched = _fetch_verified(root, remote, url)
    status = run_dvc(root, "status", "--json")
    if status.returncode != 0:
        raise FedmlpError(f"dvc status: {last_line(status)}")
    try:
        stages = json.loads(status.stdout or "{}")
    except ValueError:
        raise FedmlpError(f"dvc status --json: not JSON ({one_line(status.stdout[:200])})") from None
    outputs: list[str] = []
    lacking: list[str] = []
    for changes in stages.values():
        for change in changes if isinstance(changes, list) else []:
            for path, state in (change.get("changed outs") or {}).items() if isinstance(change, dict) else ():
                outputs.append(path)
                if state == "not in cache":
                    lacking.append(path)
    if lacking:
        why = "" if fetched.returncode == 0 else f" (dvc fetch: {last_line(fetched)})"
        raise FedmlpError(
            f"the DVC remote {remote!r} at {url} lacks outputs that dvc.lock records ({', '.join(sorted(lacking))}){why}, "
            f"or holds copies that fail their MD5 check (DVC does not keep those); "
            f"run 'make run' to compute them here, or point DVC at the remote they were pushed to: "
            f"'dvc remote add -d NAME URL' or 'dvc remote modify {remote} url URL' (--local keeps it out of git)")
    return sorted(outputs)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _object(base: Path, md5: str) -> Path:
    """Where DVC 3 keeps the object of an MD5 in a cache or a local remote (``files/md5/xx/rest``)."""
    return base / "files" / "md5" / md5[:2] / md5[2:]


def _local_remote(root: Path, url: str) -> Path | None:
    """A remote that is a directory here (its objects can be checked); None for any other kind."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    if url == "?" or "://" in url:
        return None
    path = Path(url) if Path(url).is_absolute() else root / ".dvc" / url  # relative to the config file's directory
    return path if path.is_dir() else None


def _expected_objects(root: Path, bases: list[Path]) -> list[tuple[str, str, str]]:
    """(output, file, md5) of every file dvc.lock records, directory outputs' files read from their
    ``.dir`` listing (the listing itself too, as ``<output>/.dir``) in the first of ``bases`` holding it intact."""
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise FedmlpError(f"{root / 'dvc.lock'}: cannot read it ({one_line(exc)})") from None
    expected: list[tuple[str, str, str]] = []
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or [] if isinstance(stage, dict) else []:
            path, md5 = str(out.get("path")), str(out.get("md5", ""))
            if not md5.endswith(".dir"):
                expected.append((path, path, md5))
                continue
            expected.append((path, f"{path}/.dir", md5))
            listing = next((_object(b, md5) for b in bases if _object(b, md5).is_file() and _md5(_object(b, md5)) == md5[:-4]), None)
            for entry in json.loads(listing.read_text()) if listing is not None else []:
                expected.append((path, f"{path}/{entry['relpath']}", entry["md5"]))
    return [e for e in expected if e[2]]


def _damaged(expected: list[tuple[str, str, str]], base: Path, skip: Path | None = None) -> list[tuple[Path, str]]:
    """The objects under ``base`` whose MD5 is not the one dvc.lock records (those intact under ``skip`` not read)."""
    found = []
    for output, name, md5 in expected:
        digest, where = md5.removesuffix(".dir"), _object(base, md5)
        if where.is_file() and not (skip is not None and _object(skip, md5).is_file()) and (got := _md5(where)) != digest:
            found.append((where, f"output {output}, file {name}: md5 {got}, dvc.lock records {digest}"))
    return found


def _refuse_damaged(damaged: list[tuple[Path, str]], remote: str, url: str) -> None:
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise FedmlpError(f"the DVC remote {remote!r} at {url} holds a corrupted object: {damaged[0][1]}{more}; nothing was checked out; "
                          "push an intact copy from a machine that has it ('dvc push'), or run 'make run' to compute the outputs here")


def _cache_dir(root: Path) -> Path:
    listed = run_dvc(root, "cache", "dir")
    return Path(listed.stdout.strip()) if listed.returncode == 0 and listed.stdout.strip() else root / ".dvc" / "cache"


def _fetch_verified(root: Path, remote: str, url: str) -> subprocess.CompletedProcess:
    """``dvc fetch``, with every file dvc.lock records checked against its MD5 before anything is checked out.

    DVC drops a fetched file that fails its own check (it then looks missing) but keeps files of a
    directory output unchecked; so a local remote's objects are checked before the fetch, and the
    cache's after it (a damaged one is removed from the cache), and a mismatch is named as a
    corrupted remote object: which output, which file, the expected and the actual MD5."""
    cache = _cache_dir(root)
    remote_dir = _local_remote(root, url)
    if remote_dir is not None:
        _refuse_damaged(_damaged(_expected_objects(root, [cache, remote_dir]), remote_dir, skip=cache), remote, url)
    fetched = run_dvc(root, "fetch")
    damaged = _damaged(_expected_objects(root, [cache]), cache)
    for where, _ in damaged:
        where.unlink()
    _refuse_damaged(damaged, remote, url)
    return fetched
