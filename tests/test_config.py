"""Settings parsing: every bad value names its config key."""

from __future__ import annotations

import pytest

from fedmlp.cli import main
from fedmlp.config import FederationConfig, TrainConfig, from_dict
from fedmlp.errors import FedmlpError


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"rounds": "ten"}, "train.rounds"),
        ({"lr": True}, "train.lr"),
        ({"precision": "fp8"}, "train.precision"),
        ({"augment": {"hflip": "yes"}}, "train.augment.hflip"),
        ({"augment": {"shear": 3}}, "train.augment.shear"),
        ({"round": 3}, "train.round"),
    ],
)
def test_bad_train_settings(data: dict, key: str) -> None:
    with pytest.raises(FedmlpError, match=f"config key '{key}'"):
        from_dict(TrainConfig, data, "train")


def test_nested_lists_and_optionals() -> None:
    config = from_dict(FederationConfig, {"annotated_classes": [["a"], ["b", "c"]], "n_clients": 2}, "federation")
    assert config.annotated_classes == [["a"], ["b", "c"]]
    with pytest.raises(FedmlpError, match=r"federation.annotated_classes\[1\]\[0\]"):
        from_dict(FederationConfig, {"annotated_classes": [["a"], [3]]}, "federation")


def test_cli_reports_bad_settings_in_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["split", "--store", str(tmp_path), "--settings", '{"train_fraction": "most"}', "--out", str(tmp_path / "s.json")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "fedmlp split: error: config key 'split.train_fraction': expected a number, got 'most'"
    assert not (tmp_path / "s.json").exists()


def test_the_default_runs_every_registered_method() -> None:
    import yaml
    from conftest import REPO

    from fedmlp.methods import registry
    from fedmlp.workflow_config import check_schema

    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert shipped["methods"] == "all"  # so that a new method module joins the default by itself
    check_schema(shipped, REPO / "workflow" / "schemas" / "config.schema.yaml")
    assert shipped["methods"] == registry.names()


def test_schema_defaults_are_the_default_config() -> None:
    """`--configfile` replaces config/config.yaml; keys it leaves out must fall back to the same values."""
    import copy

    import yaml
    from conftest import REPO

    from fedmlp.workflow_config import check_schema, expand_methods

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    filled = copy.deepcopy(shipped)
    check_schema(filled, schema)
    expand_methods(shipped)  # methods: all is read as the registry's list
    assert filled == shipped, "config/config.yaml should list every key with its default"
    empty: dict = {}
    check_schema(empty, schema)
    assert empty == shipped
