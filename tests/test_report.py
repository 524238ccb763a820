"""report.md from hand-made metrics: the main table marks the best method, and every method is
compared with FedMLP, paired by seed."""

from __future__ import annotations

from pathlib import Path

from fedmlp.metrics import METRICS
from fedmlp.report import write_report


def run(method: str, seed: int, mAP: float) -> dict:
    overall = {m: 0.5 for m in METRICS} | {"mAP": mAP, "AUROC": mAP + 0.2}
    return {"run": {"dataset": "d", "setting": "s", "method": method, "seed": seed}, "overall": overall,
            "per_class": {"a": {"AUROC": 0.7}}, "undefined_classes": [],
            "rounds": {"round": [1, 2], "test_mAP": [mAP - 0.1, mAP], "test_AUROC": [0.6, 0.7]}}


def test_report_marks_the_best_and_pairs_every_method_with_fedmlp(tmp_path: Path) -> None:
    values = {"fedavg-full": [0.9, 0.91, 0.92], "fedmlp": [0.6, 0.62, 0.61], "rscfed": [0.5, 0.51, 0.53], "cbafed": [0.65, 0.63, 0.64]}
    runs = [run(m, s, v) for m, seeds in values.items() for s, v in enumerate(seeds)]
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    report = (tmp_path / "report.md").read_text()
    assert "| cbafed | 3 | **0.640 ± 0.010**" in report  # best with partial labels; fedavg-full is not counted
    assert "| fedavg-full | 3 | 0.910 ± 0.010" in report
    paired = report[report.index("difference to fedmlp"):]
    rscfed = next(line for line in paired.splitlines() if line.startswith("| rscfed | mAP |"))
    cells = [c.strip() for c in rscfed.strip("|").split("|")]
    assert cells[2] == "3" and cells[3] == "-0.097" and cells[4].startswith("[-0.1") and cells[4].endswith("]")
    assert float(cells[5]) < 0.05 and float(cells[6]) >= float(cells[5])
    assert "| fedmlp | mAP |" not in paired


def test_report_shows_a_runs_warnings(tmp_path: Path) -> None:
    """A run whose method warned (FedMLP with oracle pseudo-labels) says so at the top of the report."""
    runs = [run("fedmlp", 0, 0.6), {**run("fedmlp", 1, 0.7), "warnings": ["oracle pseudo-labels: not a method"]}]
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    report = (tmp_path / "report.md").read_text()
    assert "**Warning** (fedmlp, s, seed 1): oracle pseudo-labels: not a method." in report
    assert report.count("**Warning**") == 1
