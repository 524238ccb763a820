"""Federation settings from the federation section or a sweep: the names stay as they were, a sweep
entry overrides only the keys it sets, and two settings that would share a name are refused."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from fedmlp.errors import FedmlpError
from fedmlp.sweep import federation_settings, split_name
from fedmlp.workflow_config import check_schema

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def config(**top: object) -> dict:
    data = copy.deepcopy(top)
    check_schema(data, SCHEMA)
    return data


def test_without_a_sweep_the_names_and_settings_are_the_federation_sections() -> None:
    settings = federation_settings(config(federation={"annotated_per_client": [1, 3]}))
    assert [s.name for s in settings] == ["iid-k5-a1", "iid-k5-a3"]
    assert settings[1].federation == {**config()["federation"], "annotated_per_client": 3}
    assert {s.source for s in settings} == {"federation"}
    listed = federation_settings(config(federation={"n_clients": 2, "annotated_classes": [["a"], ["b"]], "annotated_per_client": [1, 2]}))
    assert len(listed) == 1 and listed[0].name.startswith("iid-k2-listed")  # explicit lists override annotated_per_client


def test_a_sweep_overrides_the_federation_keys_it_sets() -> None:
    sweep = [{"annotated_per_client": [1, 2]}, {"partition": "dirichlet", "dirichlet_alpha": 0.25, "annotated_per_client": 1}]
    settings = federation_settings(config(federation={"n_clients": 4, "seed": 7}, sweep=sweep))
    assert [s.name for s in settings] == ["iid-k4-a1", "iid-k4-a2", "dir0.25-k4-a1"]
    assert all(s.federation["n_clients"] == 4 and s.federation["seed"] == 7 for s in settings)
    assert settings[2].source == "sweep[1]" and settings[2].key("dirichlet_alpha") == "sweep[1].dirichlet_alpha"
    assert settings[2].key("n_clients") == "federation.n_clients"


def test_the_sweep_shares_the_default_runs_setting() -> None:
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    sweep = {**copy.deepcopy(default), **yaml.safe_load((REPO / "config" / "missing-rates.yaml").read_text())}
    check_schema(default, SCHEMA)
    check_schema(sweep, SCHEMA)
    ours = {s.name: s.federation for s in federation_settings(sweep)}
    assert list(ours) == ["iid-k5-a1", "iid-k5-a2", "iid-k5-a3", "iid-k5-a4", "dir0.5-k5-a1", "dir0.5-k5-a2"]
    (theirs,) = federation_settings(default)
    assert ours[theirs.name] == theirs.federation  # the same partition parameters, so the same runs


def test_two_settings_of_one_name_are_refused() -> None:
    with pytest.raises(FedmlpError, match=r"^config key 'sweep\[1\]': setting iid-k5-a1 again \(first from sweep\[0\]\)"):
        federation_settings(config(sweep=[{}, {"seed": 3}]))


@pytest.mark.parametrize(("name", "split"), [("iid-k5-a1", ("iid-k5", 1)), ("dir0.5-k10-a12", ("dir0.5-k10", 12)),
                                              ("iid-k2-listed0a1b2c", ("iid-k2-listed0a1b2c", None))])
def test_split_name(name: str, split: tuple) -> None:
    assert split_name(name) == split
