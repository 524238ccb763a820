"""Calibration on validation: grid points are ordinary runs, the choice reads validation only, and
adding a point reruns only that point's runs."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import TINY, planned_rules, snakemake

from fedmlp import tuning
from fedmlp.errors import FedmlpError
from fedmlp.metrics import METRICS
from fedmlp.report import write_report

CONFIG = {"methods": ["fedavg-masked", "rscfed", "fedmlp"],
          "tuning": {"rscfed": {"dist_scale": [0.0, 100.0, 10000.0]}, "fedmlp": {"tau0.max": [0.05, 0.1], "lambda_cr": [1.0, 0.5]}},
          "rscfed": {"dist_scale": 10000.0, "groups": 10}, "fedmlp": {"tau0": {"min": 0.0, "max": 0.1}, "lambda_cr": 1.0, "warmup_rounds": 8}}


def test_grid_points_are_named_by_their_settings_in_config_order() -> None:
    names = tuning.run_methods(CONFIG)
    assert names == ["fedavg-masked", "rscfed@dist_scale=0", "rscfed@dist_scale=100", "rscfed@dist_scale=10000",
                     "fedmlp@tau0.max=0.05,lambda_cr=1", "fedmlp@tau0.max=0.05,lambda_cr=0.5",
                     "fedmlp@tau0.max=0.1,lambda_cr=1", "fedmlp@tau0.max=0.1,lambda_cr=0.5"]
    assert {tuning.base_method(n) for n in names} == set(CONFIG["methods"])


def test_a_point_changes_only_its_own_settings() -> None:
    point = tuning.points(CONFIG)[-1]
    settings = tuning.apply(CONFIG["fedmlp"], point.overrides)
    assert settings == {"tau0": {"min": 0.0, "max": 0.1}, "lambda_cr": 0.5, "warmup_rounds": 8}
    assert CONFIG["fedmlp"]["lambda_cr"] == 1.0  # the config is not changed


@pytest.mark.parametrize(("grid", "message"), [
    ({"fedavg-fixmatch": {"threshold_high": [0.9]}}, "config key 'tuning.fedavg-fixmatch': fedavg-fixmatch is not among 'methods'"),
    ({"fedavg-masked": {"x": [1]}}, "config key 'tuning.fedavg-masked': fedavg-masked has no settings to tune"),
    ({"rscfed": {"dist_scal": [1.0]}}, "config key 'tuning.rscfed.dist_scal': rscfed has no setting dist_scal"),
    ({"fedmlp": {"tau0": [0.1]}}, "config key 'tuning.fedmlp.tau0': a group of settings; name one of it (tau0.min, ...)"),
    ({"fedmlp": {"warmup_rounds": [4, 8]}}, "config key 'tuning.fedmlp.warmup_rounds': fedmlp's warm-up is shared"),
    ({"rscfed": {"dist_scale": []}}, "config key 'tuning.rscfed.dist_scale': expected at least one value"),
])
def test_a_bad_grid_is_refused_naming_the_key(grid: dict, message: str) -> None:
    config = {**CONFIG, "tuning": grid}
    with pytest.raises(FedmlpError) as error:
        tuning.check(config, {"fedavg-masked": None, "rscfed": "rscfed", "fedmlp": "fedmlp"}, {"fedmlp": ("warmup_rounds",)})
    assert str(error.value).startswith(message)


def run(method: str, seed: int, val: float, test: float) -> dict:
    return {"run": {"dataset": "d", "setting": "s", "method": method, "seed": seed},
            "overall": {m: 0.5 for m in METRICS} | {"mAP": test, "AUROC": test + 0.1},
            "per_class": {"a": {"AUROC": 0.7}}, "undefined_classes": [],
            "rounds": {"round": [1, 2], "test_mAP": [0.1, test], "test_AUROC": [0.1, 0.2], "val_mAP": [0.9, val]}}


def test_the_choice_reads_validation_never_test() -> None:
    # point "a" is best on test, point "b" on validation (the final round's; round 1's 0.9 is not the final one)
    runs = [run("rscfed@dist_scale=0", s, val=0.50, test=0.90) for s in range(3)]
    runs += [run("rscfed@dist_scale=100", s, val=0.60 + 0.01 * s, test=0.40) for s in range(3)]
    runs += [run("fedavg-masked", s, val=0.55, test=0.60) for s in range(3)]
    shown, table = tuning.choose(runs)
    assert sorted({r["run"]["method"] for r in shown}) == ["fedavg-masked", "rscfed"]
    assert [r["overall"]["mAP"] for r in shown if r["run"]["method"] == "rscfed"] == [0.40] * 3
    assert len(table) == 6 and set(table.columns) >= {"method", "point", "seed", "settings", "val_mAP", "chosen"}
    assert set(table.loc[table["chosen"], "point"]) == {"rscfed@dist_scale=100"}
    assert tuning.budget(table) == {("d", "s", "rscfed"): 2}


def test_a_point_without_validation_cannot_be_chosen() -> None:
    runs = [run("rscfed@dist_scale=0", 0, val=math.nan, test=0.9)]
    with pytest.raises(FedmlpError, match="rscfed@dist_scale=0 .* has no validation mAP at its final round"):
        tuning.choose(runs)


def test_the_report_shows_the_chosen_point_and_writes_every_point(tmp_path: Path) -> None:
    runs = [run(f"rscfed@dist_scale={v}", s, val=0.5 + (v == 100) * 0.1, test=0.3 + s * 0.01) for v in (0, 100) for s in range(2)]
    runs += [run("fedavg-masked", s, val=0.5, test=0.5) for s in range(2)]
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png", tuning_path=tmp_path / "tuning.csv")
    assert set(pd.read_csv(tmp_path / "summary.csv")["method"]) == {"rscfed", "fedavg-masked"}
    table = pd.read_csv(tmp_path / "tuning.csv")
    assert len(table) == 4 and table.loc[table["chosen"], "settings"].unique().tolist() == ["dist_scale=100"]
    report = (tmp_path / "report.md").read_text()
    assert "## Tuning on validation" in report and "| **s** | **rscfed** | **2** | **dist_scale=100** |" in report


@pytest.mark.slow
def test_grid_points_run_through_the_workflow_and_a_new_point_reruns_only_itself(tmp_path: Path) -> None:
    config = {**TINY, "methods": ["fedavg-masked", "fedmlp"], "federation": {"n_clients": 3, "annotated_per_client": 2},
              "split": {"val_fraction": 0.2}, "tuning": {"fedmlp": {"lambda_cr": [1.0, 0.5]}}}
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results" / "tuning.csv")
    assert sorted(table["point"]) == ["fedmlp@lambda_cr=0.5", "fedmlp@lambda_cr=1"] and table["chosen"].sum() == 1
    assert set(pd.read_csv(tmp_path / "results" / "summary.csv")["method"]) == {"fedavg-masked", "fedmlp"}
    assert (tmp_path / "results/runs/synthetic-ich/header24/draw0/iid-k3-a2/fedmlp@lambda_cr=0.5/seed0/metrics.json").is_file()

    grown = {**config, "tuning": {"fedmlp": {"lambda_cr": [1.0, 0.5, 0.25]}}}
    result = snakemake(tmp_path, grown, "--dry-run")
    assert planned_rules(result.stdout) == {"pseudolabel": 1, "teacher": 1, "report": 1, "all": 1}, result.stdout[-2000:]
