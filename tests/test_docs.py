"""The documentation: the generated references cover the parser and the schema, and README.md stays short
with working links. The site itself is built by `make docs` (CI), not here."""

from __future__ import annotations

import re
from urllib.parse import unquote

from conftest import REPO

from fedmlp.cli import build_parser
from fedmlp.reference import SCHEMA, command_reference, config_reference, subcommands
from fedmlp.workflow_config import workflow_schema

README = REPO / "README.md"


def test_every_subcommand_and_its_options_are_in_the_command_reference() -> None:
    parser = build_parser()
    text = command_reference(parser)
    for name, command in subcommands(parser).choices.items():
        assert f"## fedmlp {name}\n" in text, f"fedmlp {name} is missing from the command reference"
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in text, f"fedmlp {name} {option} is missing"


def test_every_schema_key_is_in_the_configuration_reference() -> None:
    schema = workflow_schema(SCHEMA)
    text = config_reference(schema)
    for key, prop in schema["properties"].items():
        assert f"\n## {key}\n" in text, f"config section {key!r} is missing from the configuration reference"
        for child in prop.get("properties", {}) if key != "tuning" else ():
            assert f"`{key}.{child}" in text, f"config key {key}.{child} is missing"
    # a method's setting comes from its dataclass, a shared one from the schema file
    assert "| `fedmlp.stage2_views` |" in text and "| `model.width` |" in text


def test_the_configuration_reference_says_where_config_yaml_differs_from_the_schema() -> None:
    schema = workflow_schema(SCHEMA)
    text = config_reference(schema, config={"model": {"width": 99}})
    row = next(line for line in text.splitlines() if line.startswith("| `model.width` |"))
    assert "(config.yaml: `99`)" in row


def test_readme_is_short_and_its_relative_links_resolve() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 260, "README.md is meant to stay short: move detail into docs/"
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    assert relative, "README.md links into docs/"
    missing = [t for t in relative if not (REPO / unquote(t.split("#")[0])).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
