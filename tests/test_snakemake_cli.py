"""How people call Snakemake: one value overridden with ``--config`` (nested values arrive as strings
and are read by the schema's types), and ``.venv/bin/snakemake`` without activating the venv."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, bin_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from snakemake.cli import parse_config
from test_workflow import TINY, planned_rules, snakemake

from fedmlp.errors import FedmlpError
from fedmlp.workflow_config import check_schema, coerce_strings, workflow_schema

SCHEMA_FILE = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = workflow_schema(SCHEMA_FILE)
SNAKEFILE = next(p for p in (REPO / "workflow" / "Snakefile", REPO / "Snakefile") if p.is_file())


def command_line(config: dict) -> dict:
    """``config`` as Snakemake itself parses ``--config key=<YAML flow value>`` for each top-level key."""
    entries = [f"{key}={yaml.safe_dump(value, default_flow_style=True, width=float('inf')).removesuffix(chr(10)).removesuffix('...').strip()}"
               for key, value in config.items()]
    return parse_config(entries)


def same(a: object, b: object) -> bool:
    """Equal with types (1 is not True, 3 is not 3.0)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("fedmlp={lambda_cr: 0.5}", {"fedmlp": {"lambda_cr": 0.5}}),
        ("train={rounds: 3, lr: 1e-3, augment: {hflip: false}}", {"train": {"rounds": 3, "lr": 0.001, "augment": {"hflip": False}}}),
        ("seeds=[0, 1]", {"seeds": [0, 1]}),
        ("federation={annotated_per_client: [1, 2], images_per_client: null, dirichlet_alpha: 2}",
         {"federation": {"annotated_per_client": [1, 2], "images_per_client": None, "dirichlet_alpha": 2}}),
        ("federation={annotated_per_client: 3, annotated_classes: ~}", {"federation": {"annotated_per_client": 3, "annotated_classes": None}}),
        ("fedmlp={tau1: {max: .5}}", {"fedmlp": {"tau1": {"max": 0.5}}}),
        # where the schema allows a string, strings stay strings, whatever they look like
        ("ich={root: 2024, competition: true}", {"ich": {"root": "2024", "competition": "true"}}),
        ("model={weights_sha256: 1234}", {"model": {"weights_sha256": "1234"}}),
    ],
)
def test_command_line_strings_are_read_by_the_schema(override: str, expected: dict) -> None:
    config = coerce_strings(parse_config([override]), SCHEMA)
    assert same(config, expected)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fedmlp={lambda_cr: half}", "config key 'fedmlp.lambda_cr': 'half' is not of type 'number'"),
        ("train={rounds: 3.0}", "config key 'train.rounds': '3.0' is not of type 'integer'"),
        ("train={rounds: 010}", "config key 'train.rounds': '010' is not of type 'integer'"),  # octal in YAML 1.1, 10 in 1.2
        ("train={rounds: 0x10}", "config key 'train.rounds': '0x10' is not of type 'integer'"),
        ("train={rounds: 1_000}", "config key 'train.rounds': '1_000' is not of type 'integer'"),
        ("train={lr: nan}", "config key 'train.lr': 'nan' is not of type 'number'"),
        ("train={lr: 1e999}", "config key 'train.lr': inf is not a finite number"),
        ("train={augment: {hflip: yes}}", "config key 'train.augment.hflip': 'yes' is not of type 'boolean' (write true or false)"),
        ("cluster={local_download: on}", "config key 'cluster.local_download': 'on' is not of type 'boolean' (write true or false)"),
        ("seeds=[0, one]", "config key 'seeds[1]': 'one' is not of type 'integer'"),
        ("fedmlp={lambda_cr: null}", "config key 'fedmlp.lambda_cr': 'null' is not of type 'number'"),
    ],
)
def test_command_line_value_that_does_not_parse_names_the_key(override: str, message: str) -> None:
    with pytest.raises(FedmlpError) as caught:
        check_schema(parse_config([override]), SCHEMA_FILE)
    assert str(caught.value) == message


def test_coercion_keeps_values_of_the_right_type_and_copies() -> None:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    before = copy.deepcopy(config)
    assert same(coerce_strings(config, SCHEMA), before) and same(config, before)
    assert coerce_strings({"unknown": "3"}, SCHEMA) == {"unknown": "3"}  # no schema for it: the schema error names it


def _value(schema: dict) -> st.SearchStrategy:
    """Values of the JSON types ``schema`` allows (bounds ignored: coercion goes by type only)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    branches = [schema] + schema.get("anyOf", []) + schema.get("oneOf", [])
    options = []
    for branch in branches:
        types = branch.get("type", [])
        types = [types] if isinstance(types, str) else types
        if "string" in types:  # "null" then stays a string: give null in a config file (docs/configuration.md)
            types = [kind for kind in types if kind != "null"]
        for kind in types:
            if kind == "object" and "properties" in branch:
                options.append(st.fixed_dictionaries({}, optional={k: _value(v) for k, v in branch["properties"].items()}))
            elif kind == "array":
                options.append(st.lists(_value(branch.get("items", {"type": "string"})), max_size=3))
            else:
                options.append({
                    "integer": st.integers(), "number": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
                    "boolean": st.booleans(), "null": st.none(), "string": st.text(max_size=12),
                }[kind])
    return st.one_of(options)


SECTIONS = {key: prop for key, prop in SCHEMA["properties"].items() if prop.get("type") in ("object", "array")}


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({}, optional={key: _value(prop) for key, prop in SECTIONS.items()}))
def test_config_round_trips_through_the_command_line(config: dict) -> None:
    """Every section and list, written as ``--config key={...}`` and parsed by Snakemake into strings,
    comes back as the same values of the same types (strings that look like numbers stay strings)."""
    assert same(coerce_strings(command_line(config), SCHEMA), config)


def test_snakemake_accepts_a_nested_override_and_names_a_bad_one(tmp_path: Path) -> None:
    """A real dry run of the tiny config with one value overridden on the command line."""
    good = snakemake(tmp_path, TINY, "--dry-run", "--config", "fedmlp={lambda_cr: 0.5}", "train={rounds: 3}")
    assert good.returncode == 0, good.stderr[-2000:]
    bad = snakemake(tmp_path, TINY, "--dry-run", "--config", "fedmlp={lambda_cr: half}")
    assert bad.returncode != 0
    lines = [line for line in (bad.stdout + bad.stderr).splitlines() if "config key" in line]
    assert lines and lines[0].endswith("config key 'fedmlp.lambda_cr': 'half' is not of type 'number'")


def _without_venv_path() -> str:
    """PATH without this interpreter's bin directory (an environment that was never activated)."""
    keep = [p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p).resolve() != Path(bin_dir()).resolve()]
    return os.pathsep.join(keep)


@pytest.mark.slow
def test_rules_find_fedmlp_without_activation_and_overrides_equal_the_file(tmp_path: Path) -> None:
    """``.venv/bin/snakemake`` by its path, with a PATH that has no ``fedmlp``, runs real jobs; then the
    same values given with ``--config`` instead of the file plan nothing (the params are equal, so the
    strings were read as the file's integers and floats)."""
    env = {**os.environ, "PATH": _without_venv_path(), "FEDMLP_PROGRESS": "0"}
    assert subprocess.run(["sh", "-c", "command -v fedmlp"], env=env, capture_output=True).returncode != 0
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(TINY))
    base = [f"{bin_dir()}/snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path),
            "--configfile", str(config_path), "--cores", "1", "--until", "split"]
    result = subprocess.run(base, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "results/runs/synthetic-ich/header24/draw0/split.json").is_file()
    for override, expected in [
        (["synthetic={n_images: 60, image_size: 48, cooccurrence: 0.3}", "split={train_fraction: 0.7}"], {}),
        (["synthetic={n_images: 61}"], {"synthesize": 1, "ingest": 1, "split": 1}),  # the dry run does see a change
    ]:
        again = subprocess.run([*base, "--dry-run", "--config", *override], env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
        assert planned_rules(again.stdout) == expected, override
