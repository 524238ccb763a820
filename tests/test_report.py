"""report.md from hand-made metrics: the main table marks the best method, and every method is
compared with FedMLP, paired by seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmlp.commands.report import check_metrics
from fedmlp.errors import FedmlpError
from fedmlp.metrics import METRICS
from fedmlp.report import family_tables, summary_frame, write_report
from fedmlp.statistics import compare_to


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


SETTINGS = {"iid-k5-a1": 1, "iid-k5-a2": 2, "iid-k5-a3": 3, "dir0.5-k5-a1": 1, "dir0.5-k5-a2": 2}
OFFSETS = {"fedavg-full": 0.3, "fedmlp": 0.0, "cbafed": 0.02, "rscfed": -0.1, "fedlsr": -0.01}


def sweep_runs(best_val: bool | None = False, seeds: int = 5) -> list[dict]:
    """Every method of OFFSETS in every setting of SETTINGS, mAP rising with the annotated classes, a
    seed effect shared by the methods (what pairing removes) and a little noise; best_val: a field
    (True), null (None) or absent (False)."""
    rng = np.random.default_rng(0)
    runs = []
    for setting, annotated in SETTINGS.items():
        for method, offset in OFFSETS.items():
            for seed in range(seeds):
                r = run(method, seed, 0.5 + 0.05 * annotated + offset + 0.02 * seed + rng.normal(0, 0.005))
                r["run"]["setting"] = r["run"]["setting"].replace("s", setting)
                r["per_class"] = {c: {"AUROC": 0.7} for c in "abcde"}
                if best_val is None:
                    r["best_val"] = None
                elif best_val:
                    r["best_val"] = {"round": 1, "val_mAP": 0.6, "test_mAP": r["overall"]["mAP"] - 0.01, "test_AUROC": 0.7}
                runs.append(r)
    return runs


def test_family_tables_have_a_column_per_missing_rate_and_bold_the_best() -> None:
    summary = summary_frame(sweep_runs())
    tables = {t.family: t for t in family_tables(summary, "mAP", {"d": 5})}
    assert set(tables) == {"iid-k5", "dir0.5-k5"}
    iid = tables["iid-k5"]
    assert list(iid.cells.index) == list(OFFSETS)
    assert list(iid.cells.columns) == ["1 (80% missing)", "2 (60% missing)", "3 (40% missing)"] and iid.annotated == (1, 2, 3)
    assert tables["dir0.5-k5"].cells.shape == (5, 2)
    assert iid.best.sum().tolist() == [1, 1, 1] and iid.best.loc["cbafed"].all()  # fedavg-full is the upper bound, never bold
    mean = summary[(summary["setting"] == "iid-k5-a2") & (summary["method"] == "fedmlp") & (summary["metric"] == "mAP")]["value"]
    assert iid.cells.loc["fedmlp", "2 (60% missing)"] == f"{mean.mean():.3f} ± {mean.std():.3f}"


def test_paired_differences_per_setting_are_holm_adjusted_and_their_intervals_hold_the_mean() -> None:
    summary = summary_frame(sweep_runs())
    for setting in SETTINGS:
        results = compare_to(summary[summary["setting"] == setting], "fedmlp", "mAP")
        assert {r.method for r in results} == set(OFFSETS) - {"fedmlp"} and all(r.n == 5 for r in results)
        assert all(r.low <= r.mean <= r.high for r in results)
        by_p = sorted(results, key=lambda r: r.p)
        assert all(r.p_holm >= r.p for r in results)
        assert [r.p_holm for r in by_p] == sorted(r.p_holm for r in by_p)  # monotone in the raw p
        far = [r for r in results if abs(OFFSETS[r.method]) >= 0.1]  # every seed's difference of one sign
        assert far and all(r.p_wilcoxon == pytest.approx(0.0625) for r in far)  # the least p of 5 seeds
        rscfed = next(r for r in results if r.method == "rscfed")
        assert rscfed.mean == pytest.approx(-0.1, abs=0.01) and rscfed.p_holm < 0.05


def well_formed_latex(text: str) -> list[str]:
    """The tabular rows of a LaTeX file after checking its environments and braces balance."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    for environment in ("table", "tabular"):
        assert body.count(f"\\begin{{{environment}}}") == body.count(f"\\end{{{environment}}}") > 0
    depth = 0
    for char in body.replace("\\{", "").replace("\\}", ""):
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0 and "±" not in body
    return [line for line in body.splitlines() if line.endswith("\\\\")]


def test_report_across_settings(tmp_path: Path) -> None:
    write_report(sweep_runs(), tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "figures" / "rounds.png",
                 latex_path=tmp_path / "table.tex")
    report = (tmp_path / "report.md").read_text()
    assert report.index("## Across settings") < report.index("## d · iid-k5-a1")
    for heading in ("### d · iid-k5: test mAP", "### d · iid-k5: test AUROC", "### d · dir0.5-k5: mAP difference to fedmlp"):
        assert heading in report
    assert "| method | 1 (80% missing) | 2 (60% missing) | 3 (40% missing) |" in report
    assert "best-validation" not in report  # no validation split: nothing about it
    assert "p (Wilcoxon)" in report and "![test mAP against annotated classes per client](figures/map_by_annotated.png)" in report
    assert (tmp_path / "figures" / "map_by_annotated.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    latex = (tmp_path / "table.tex").read_text()
    rows = well_formed_latex(latex)
    assert latex.count("\\begin{table}") == 2 and all(rule in latex for rule in ("\\toprule", "\\midrule", "\\bottomrule"))
    assert "\\multicolumn{3}{c}{mAP}" in latex and "\\multicolumn{3}{c}{AUROC}" in latex and "$\\pm$" in latex
    iid = rows[:2 + len(OFFSETS)]  # the first table: two header rows, then a row per method
    assert iid[0].count("&") == 2 and all(row.count("&") == 6 for row in iid[1:])  # the metrics over method + 3 + 3 columns
    cbafed = next(row for row in iid if row.startswith("cbafed &"))
    assert cbafed.count("\\textbf{") == 6 and sum(row.count("\\textbf{") for row in iid) == 6


@pytest.mark.parametrize("best_val", [True, None, False], ids=["present", "null", "absent"])
def test_best_validation_round_is_shown_only_when_there_is_one(tmp_path: Path, best_val: bool | None) -> None:
    runs = sweep_runs(best_val)
    for r in runs:
        check_metrics(r, tmp_path / "metrics.json")
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "rounds.png", latex_path=tmp_path / "table.tex")
    report, latex = (tmp_path / "report.md").read_text(), (tmp_path / "table.tex").read_text()
    shown = best_val is True
    assert ("### d · iid-k5: test mAP at the best-validation round" in report) == shown
    assert ("| test mAP at the best-validation round |" in report) == shown  # the column of each setting's main table
    assert ("{mAP at best val.}" in latex) == shown
    well_formed_latex(latex)
    if shown:
        assert "| fedmlp | 5 | " in report and set(pd.read_csv(tmp_path / "summary.csv")["metric"]) == set(METRICS)


def test_a_bad_best_val_is_refused(tmp_path: Path) -> None:
    r = sweep_runs(True, seeds=1)[0]
    r["best_val"] = {"round": 1, "val_mAP": 0.6, "test_mAP": "high", "test_AUROC": 0.7}
    with pytest.raises(FedmlpError, match="best_val: expected null or a number"):
        check_metrics(r, tmp_path / "metrics.json")


def test_one_setting_has_no_section_across_settings_but_a_latex_table(tmp_path: Path) -> None:
    runs = [r for r in sweep_runs() if r["run"]["setting"] == "iid-k5-a1"]
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "rounds.png", latex_path=tmp_path / "table.tex")
    assert "Across settings" not in (tmp_path / "report.md").read_text() and not (tmp_path / "map_by_annotated.png").exists()
    rows = well_formed_latex((tmp_path / "table.tex").read_text())
    assert len(rows) == 2 + len(OFFSETS) and all(row.count("&") == 2 for row in rows)


def test_report_shows_a_runs_warnings(tmp_path: Path) -> None:
    """A run whose method warned (FedMLP with oracle pseudo-labels) says so at the top of the report."""
    runs = [run("fedmlp", 0, 0.6), {**run("fedmlp", 1, 0.7), "warnings": ["oracle pseudo-labels: not a method"]}]
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    report = (tmp_path / "report.md").read_text()
    assert "**Warning** (fedmlp, s, seed 1): oracle pseudo-labels: not a method." in report
    assert report.count("**Warning**") == 1


def gate_rows(rates: dict[int, list[float]], gate: str = "relation", side: str = "client") -> list[dict]:
    """Gate rows as the training commands write them: per round, one rate per unit."""
    return [{"round": r, "side": side, "unit": u, "gate": gate, "rate": rate} for r, values in rates.items()
            for u, rate in enumerate(values)]


def test_report_has_a_gates_section_when_runs_logged_gates(tmp_path: Path) -> None:
    """Per method and gate: the rate averaged over units in the first and the last logged round,
    mean ± SD over seeds; no section without gate rows."""
    runs = [run("fedmlp", 0, 0.6), run("fedmlp", 1, 0.6)]
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    assert "## Gates" not in (tmp_path / "report.md").read_text()
    irm = [{**run("fedirm", s, 0.5), "gates": gate_rows({2: [0.0, 0.2], 3: [0.5, 0.5], 4: [0.4 + 0.2 * s, 0.6 + 0.2 * s]})}
           for s in range(2)]
    rsc = {**run("rscfed", 0, 0.5), "gates": gate_rows({1: [1.0, 0.5], 2: [0.5, 0.5]}, "dma_max_weight", "server")}
    runs = [*runs, *irm, rsc]
    for r in runs:
        check_metrics(r, tmp_path / "metrics.json")
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    report = (tmp_path / "report.md").read_text()
    section = report[report.index("## Gates"):]
    assert "| s | fedirm | relation (clients) | 2 | 0.100 ± 0.000 | 4 | 0.600 ± 0.141 |" in section
    assert "| s | rscfed | dma_max_weight (server) | 1 | 0.750 | 2 | 0.500 |" in section
    assert "fedmlp" not in section


@pytest.mark.parametrize("row", [{"round": 1, "side": "client", "unit": 0, "gate": "g", "rate": 1.5},
                                 {"round": 1, "side": "site", "unit": 0, "gate": "g", "rate": 0.5},
                                 {"round": 1, "side": "client", "unit": 0, "rate": 0.5}])
def test_a_bad_gate_row_is_refused(tmp_path: Path, row: dict) -> None:
    with pytest.raises(FedmlpError, match="gates: expected a list"):
        check_metrics({**run("fedirm", 0, 0.5), "gates": [row]}, tmp_path / "metrics.json")
