"""scripts/ablation (fedmlp.ablation): the shipped arms are valid and ordered to share warm-ups, the
table from hand-made runs, and a tiny ablation through the real workflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, bin_dir

from fedmlp.ablation import estimate_jobs, load_plan, stage_signatures, write_table
from fedmlp.errors import FedmlpError
from fedmlp.metrics import METRICS

TINY = {
    "synthetic": {"n_images": 60, "image_size": 48},
    "preprocess": {"size": 24},
    "federation": {"n_clients": 3, "annotated_per_client": 2},
    "model": {"width": 4},
    "train": {"rounds": 2, "batch_size": 8},
    "fedmlp": {"warmup_rounds": 1, "selection": "fixed", "tau0": {"fixed": 0.3}, "tau1": {"fixed": 0.3}},
}


def test_the_shipped_arms_are_valid_and_share_warmups(tmp_path: Path) -> None:
    plan = load_plan(REPO / "config" / "ablation.yaml", tmp_path, REPO)
    names = [arm.name for arm in plan.arms]
    assert names[0] == plan.reference == "default" and plan.seeds == [0, 1, 2, 3, 4]
    assert {"no-pseudo", "oracle", "lambda-cr-0", "lambda-dis-0", "warmup-4", "warmup-12", "selection-x5",
            "pseudo-weight-0.5", "pseudo-weight-2"} <= set(names)
    arms = {arm.name: arm for arm in plan.arms}
    assert arms["warmup-4"].fedmlp["warmup_rounds"] == 4 and "rounds" not in arms["warmup-4"].fedmlp
    assert arms["no-pseudo"].fedmlp["tau1"] == {"min": 0.0, "max": 0.0, "fixed": 0.01}  # deep-merged
    # arms that keep the default's stage-1 keys run first, one after another (they reuse its warm-up)
    stage1 = [stage_signatures(arm.fedmlp)[0] for arm in plan.arms]
    assert stage1 == sorted(stage1, key=stage1.index)  # each warm-up's arms are contiguous
    shared = {"oracle", "lambda-cr-0", "no-pseudo", "selection-x5", "selection-fixed", "degree-prior", "pseudo-weight-0.5",
              "pseudo-weight-2"}
    assert all(stage1[names.index(n)] == stage1[0] for n in shared)
    assert stage1[names.index("lambda-dis-0")] != stage1[0]
    rows = estimate_jobs(plan)
    count = {kind: sum(r[2] for r in rows if r[1] == kind) for kind in ("warmup", "pseudolabel", "teacher", "train")}
    assert count == {"warmup": 5 * 5, "pseudolabel": 9 * 5, "teacher": len(names) * 5, "train": 2 * 5}


def test_a_bad_arm_fails_before_any_work(tmp_path: Path) -> None:
    arms = tmp_path / "arms.yaml"
    arms.write_text(yaml.safe_dump({"arms": [{"name": "default"}, {"name": "typo", "fedmlp": {"lambda_crr": 0}}]}))
    with pytest.raises(FedmlpError, match="arm typo: config key 'fedmlp.lambda_crr': unknown key"):
        load_plan(arms, tmp_path, REPO)
    arms.write_text(yaml.safe_dump({"arms": [{"name": "default"}, {"name": "default"}]}))
    with pytest.raises(FedmlpError, match="used twice"):
        load_plan(arms, tmp_path, REPO)


def _fake_run(root: Path, name: str, seed: int, mAP: float, val: float | None, diagnostics: bool) -> None:
    run = root / "ablation" / "runs" / name / "iid-k5-a1" / f"seed{seed}"
    run.mkdir(parents=True)
    rounds = {"round": [1, 2], "test_mAP": [mAP - 0.1, mAP], "test_AUROC": [0.6, 0.7]}
    if val is not None:
        rounds["val_mAP"] = [val - 0.1, val]
    metrics = {"run": {"dataset": "d", "setting": "iid-k5-a1", "method": "fedmlp", "seed": seed},
               "overall": {m: 0.5 for m in METRICS} | {"mAP": mAP}, "rounds": rounds}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if diagnostics:
        rows = [{"dataset": "d", "setting": "iid-k5-a1", "method": "fedmlp", "seed": seed, "round": r, "client": 0, "class": "a",
                 "selected_negative": 10 * r, "selected_positive": 2 * r, "correct_negative": 10 * r, "correct_positive": r,
                 "hidden_positives": 8} for r in (1, 2)]
        pd.DataFrame(rows).to_csv(run / "diagnostics.csv", index=False)


def test_the_table_pairs_by_seed_and_shows_val_and_diagnostics(tmp_path: Path) -> None:
    arms = tmp_path / "arms.yaml"
    arms.write_text(yaml.safe_dump({"seeds": [0, 1, 2], "baselines": ["fedavg-masked"],
                                    "arms": [{"name": "default"}, {"name": "no-pseudo", "fedmlp": {"tau1": {"max": 0.0}}}]}))
    plan = load_plan(arms, tmp_path, REPO)
    for seed, (a, b, m) in enumerate([(0.60, 0.55, 0.62), (0.58, 0.54, 0.61), (0.61, 0.57, 0.63)]):
        _fake_run(tmp_path, "default", seed, a, a - 0.02, True)
        _fake_run(tmp_path, "no-pseudo", seed, b, b - 0.02, True)
        _fake_run(tmp_path, "fedavg-masked", seed, m, None, False)
    table = write_table(plan).read_text()
    rows = {line.split(" | ")[0].strip("| "): [c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| arm")}
    assert list(rows) == ["default", "no-pseudo", "fedavg-masked"]
    assert rows["default"][3] == "0.597 ± 0.015" and rows["default"][4] == "0.577 ± 0.015"  # test, val (final round)
    assert rows["no-pseudo"][5].startswith("-0.043 [") and float(rows["no-pseudo"][6]) < 0.05  # paired to default, Holm
    assert rows["no-pseudo"][7].startswith("-0.043 [") and float(rows["no-pseudo"][8]) < 0.05  # the same on validation
    assert rows["fedavg-masked"][7] == "—"  # no validation set: nothing to pair, not a spurious p = 0
    assert rows["default"][9].startswith("-0.023 [") and rows["fedavg-masked"][9] == "—"
    assert rows["default"][11:] == ["4", "0.500 ± 0.000", "20", "1.000 ± 0.000", "0.250 ± 0.000"]  # last round
    assert rows["fedavg-masked"][4] == "n/a" and rows["fedavg-masked"][11] == "—"
    assert (tmp_path / "ablation" / "ablation.csv").is_file()


@pytest.mark.slow
def test_a_tiny_ablation_through_the_workflow(tmp_path: Path) -> None:
    """Two arms (the second, oracle pseudo-labels, reuses the first's warm-up and detection), two
    seeds, a baseline: the table has both arms, a paired row and the oracle's mark; a second call
    runs nothing."""
    arms = tmp_path / "arms.yaml"
    arms.write_text(yaml.safe_dump({"overrides": TINY, "seeds": [0, 1], "baselines": ["fedavg-masked"],
                                    "arms": [{"name": "default"}, {"name": "oracle", "fedmlp": {"oracle_pseudolabels": True}}]}))
    command = [sys.executable, str(REPO / "scripts" / "ablation"), "--arms", str(arms), "--workdir", str(tmp_path / "work")]
    env = {**os.environ, "PATH": f"{bin_dir()}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "work" / "ablation"
    table = (out / "ablation.md").read_text()
    assert "| default | — | 2 |" in table and "| oracle † |" in table and "| fedavg-masked | baseline | 2 |" in table
    oracle = next(line for line in table.splitlines() if line.startswith("| oracle †"))
    assert "[" in oracle.split("|")[6]  # Δ vs default with its 95 % interval
    log = (out / "logs" / "oracle.log").read_text()
    assert "rule warmup" not in log and "rule pseudolabel" not in log and "rule teacher" in log  # only stage 2 reran
    metrics = json.loads(next((out / "runs" / "oracle").glob("*/seed0/metrics.json")).read_text())
    assert "hidden TRUE labels" in metrics["warnings"][0]
    assert "warnings" not in json.loads(next((out / "runs" / "default").glob("*/seed0/metrics.json")).read_text())
    diagnostics = pd.read_csv(out / "pseudolabels.csv")
    assert (diagnostics["selected_positive"] + diagnostics["selected_negative"] > 0).all()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert again.returncode == 0 and again.stdout.count("done before, kept") == 2
