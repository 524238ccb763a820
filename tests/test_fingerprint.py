"""The rules' code fingerprints cover the code their commands run, and no more (fedmlp.fingerprint).

A data-preparation rule whose closure held the training code would rebuild the data (on real data,
hundreds of gigabytes re-ingested) after any edit of a model, an augmentation or a method.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedmlp import fingerprint

DATA_RULES = ("synthesize", "download", "ingest", "split", "partition")
TRAINING_ONLY = ("fedmlp.augment", "fedmlp.models", "fedmlp.optim", "fedmlp.loader", "fedmlp.federated", "fedmlp.methods")


def all_modules() -> list[str]:
    """Every module of the package, found by listing its files."""
    names = []
    for path in sorted(fingerprint.SRC.rglob("*.py")):
        parts = path.relative_to(fingerprint.SRC).with_suffix("").parts
        names.append(".".join((fingerprint.PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


def rule_closure(rule: str, *method_modules: str) -> list[str]:
    return fingerprint.closure(*fingerprint.ENTRY, *fingerprint.rule_roots(rule, *method_modules), exclude=fingerprint.ENTRY)


def is_training_only(module: str) -> bool:
    return any(module == m or module.startswith(f"{m}.") for m in TRAINING_ONLY)


def test_no_import_cycle_among_the_modules() -> None:
    """The import graph (function-local imports included, as the fingerprints follow them) is acyclic;
    a failure names one cycle."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(fingerprint.direct_imports(module) - {module}):
            if state.get(imported) == "open":
                cycle = [*path[path.index(imported):], module, imported] if imported in path else [module, imported]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if imported not in state:
                visit(imported, [*path, module])
        state[module] = "done"

    modules = all_modules()
    assert "fedmlp.methods.base" in modules and "fedmlp.config" in modules
    for module in modules:
        if module not in state:
            visit(module, [])


@pytest.mark.parametrize("rule", DATA_RULES)
def test_data_rules_hold_no_training_code(rule: str) -> None:
    assert [m for m in rule_closure(rule) if is_training_only(m)] == []


@pytest.mark.parametrize("rule", fingerprint.TRAINING_RULES)
def test_training_rules_hold_the_training_code(rule: str) -> None:
    closure = rule_closure(rule, "fedmlp.methods.fedmlp")
    for module in ("fedmlp.augment", "fedmlp.models", "fedmlp.methods.base", "fedmlp.methods.fedmlp", "fedmlp.config"):
        assert module in closure
    assert "fedmlp.methods.rscfed" not in closure  # another method's edit reruns that method's jobs only


def test_an_edit_of_training_code_changes_training_fingerprints_only(tmp_path: Path, monkeypatch) -> None:
    """A comment added to augment.py (on a copy of the package) changes the training rules' code
    fingerprints and the report's (which imports every method), and no data rule's."""
    copy = tmp_path / "fedmlp"
    shutil.copytree(fingerprint.SRC, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "SRC", copy)
    method = "fedmlp.methods.fedmlp"

    def fingerprints() -> dict[str, str]:
        fingerprint.direct_imports.cache_clear()
        return {rule: fingerprint.code_fingerprint(*fingerprint.rule_roots(rule, method)) for rule in fingerprint.RULE_COMMANDS}

    before = fingerprints()
    with (copy / "augment.py").open("a") as file:
        file.write("# an edit of the training code\n")
    after = fingerprints()
    fingerprint.direct_imports.cache_clear()
    changed = {rule for rule in before if before[rule] != after[rule]}
    assert changed == {*fingerprint.TRAINING_RULES, *fingerprint.ALL_METHODS_RULES}
