"""Code fingerprints for the workflow: a hash of the library modules a command actually imports.

Snakemake does not track imported code, so each rule passes the fingerprint of its code as a param.
The modules are found by following ``import fedmlp...`` / ``from fedmlp... import`` statements
(function-local ones included) from the rule's command module, without importing anything. Method
modules are loaded by the registry at run time, not imported by name, so they are not in a
command's closure: a training job adds its own method's module, and editing one method reruns that
method's jobs only. Dataset modules are loaded by the source registry the same way; the rules that
go through it (download, ingest) follow every one of them.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = "fedmlp"
SRC = Path(__file__).resolve().parent
ENTRY = ("fedmlp.cli",)  # every command runs through the CLI's argument parsing and error handling


def module_path(name: str) -> Path | None:
    relative = Path(*name.split(".")[1:])
    for candidate in (SRC / relative / "__init__.py", (SRC / relative).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@cache
def direct_imports(name: str) -> frozenset[str]:
    path = module_path(name)
    if path is None:
        return frozenset()
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                continue
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if module_path(f"{base}.{alias.name}") is not None)
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    for module in list(found):
        parts = module.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return frozenset(m for m in found if module_path(m) is not None)


def closure(*roots: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Every fedmlp module reachable from ``roots`` by import statements, sorted; modules in ``exclude``
    (the CLI's table of all commands) are included but not followed."""
    seen: set[str] = set()
    todo = [r for r in roots if module_path(r) is not None]
    todo += [".".join(r.split(".")[:i]) for r in todo for i in range(1, len(r.split(".")))]  # their packages' __init__
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name not in exclude:
            todo.extend(direct_imports(name) - seen)
    return sorted(seen)


def code_files(*roots: str) -> list[Path]:
    """The source files of the modules ``roots`` (and the CLI entry point) import, in module order."""
    return [module_path(name) for name in closure(*ENTRY, *roots, exclude=ENTRY)]


def code_fingerprint(*roots: str) -> str:
    """Hash of the sources of the modules ``roots`` (and the CLI entry point) import."""
    digest = hashlib.sha256()
    for path in code_files(*roots):
        digest.update(path.relative_to(SRC).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# The command module (fedmlp.commands.<module>) each workflow rule runs: the rules' code params
# (workflow/rules/common.smk) and the DVC stages' code dependencies (fedmlp.versioning) both come from it.
RULE_COMMANDS = {
    "synthesize": "synth",
    "download": "download",
    "ingest": "ingest",
    "split": "split",
    "partition": "split",
    "train": "training",
    "warmup": "training",
    "pseudolabel": "training",
    "teacher": "training",
    "report": "report",
}
TRAINING_RULES = ("train", "warmup", "pseudolabel", "teacher")  # these add their method's module
ALL_METHODS_RULES = ("report",)  # these print every method's display name, so follow every method module
SOURCE_RULES = ("download", "ingest")  # these reach their dataset's module through the source registry: follow every one


def all_method_modules() -> tuple[str, ...]:
    """Every method module, found by listing the package as the registry does (nothing is imported)."""
    from fedmlp.methods.registry import INFRASTRUCTURE

    return tuple(f"{PACKAGE}.methods.{path.stem}" for path in sorted((SRC / "methods").glob("*.py"))
                 if path.stem not in INFRASTRUCTURE and not path.stem.startswith("_"))


def all_source_modules() -> tuple[str, ...]:
    """Every dataset's module, as the source registry lists them (nothing heavy is imported)."""
    from fedmlp.sources.registry import MODULES

    return tuple(MODULES.values())


def rule_roots(rule: str, *method_modules: str) -> tuple[str, ...]:
    """The modules a rule's code params follow: its command module, plus the method's for training,
    every method's for the report and every dataset's for the rules that go through the source registry."""
    if rule in ALL_METHODS_RULES:
        method_modules = all_method_modules()
    elif rule not in TRAINING_RULES:
        method_modules = ()
    source_modules = all_source_modules() if rule in SOURCE_RULES else ()
    return (f"{PACKAGE}.commands.{RULE_COMMANDS[rule]}", *method_modules, *source_modules)
