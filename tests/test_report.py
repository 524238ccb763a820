"""report.md from hand-made metrics: the main table marks the best method, and the comparisons
(against fedavg-masked and among the top three, paired by seed, Holm over the whole family) give the
generated conclusions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmlp.claims import family, pairs
from fedmlp.commands.report import check_metrics
from fedmlp.config import ClaimsConfig, EquivalenceMargin, from_json
from fedmlp.errors import FedmlpError
from fedmlp.metrics import METRICS
from fedmlp.report import family_tables, summary_frame, write_report
from fedmlp.statistics import compare_to


def run(method: str, seed: int, mAP: float) -> dict:
    overall = {m: 0.5 for m in METRICS} | {"mAP": mAP, "AUROC": mAP + 0.2}
    return {"run": {"dataset": "d", "setting": "s", "method": method, "seed": seed}, "overall": overall,
            "per_class": {"a": {"AUROC": 0.7}}, "undefined_classes": [],
            "rounds": {"round": [1, 2], "test_mAP": [mAP - 0.1, mAP], "test_AUROC": [0.6, 0.7]}}


def test_report_marks_the_best_and_pairs_every_method_with_fedavg_masked(tmp_path: Path) -> None:
    values = {"fedavg-full": [0.9, 0.91, 0.92], "fedavg-masked": [0.6, 0.62, 0.61], "rscfed": [0.5, 0.51, 0.53],
              "cbafed": [0.65, 0.63, 0.64]}
    runs = [run(m, s, v) for m, seeds in values.items() for s, v in enumerate(seeds)]
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    report = (tmp_path / "report.md").read_text()
    assert "| cbafed | 3 | **0.640 ± 0.010**" in report  # best with partial labels; fedavg-full is not counted
    assert "| fedavg-full | 3 | 0.910 ± 0.010" in report
    paired = report[report.index("| comparison |"):]
    rscfed = next(line for line in paired.splitlines() if line.startswith("| rscfed − fedavg-masked | mAP |"))
    cells = [c.strip() for c in rscfed.strip("|").split("|")]
    assert cells[2] == "3" and cells[3] == "-0.097" and cells[4].startswith("[-0.1") and cells[4].endswith("]")
    assert float(cells[5]) < 0.05 and float(cells[6]) >= float(cells[5])
    assert "fedavg-full −" not in paired and "− fedavg-full" not in paired  # the upper bound is not tested


HAND = {  # method → its offset from fedavg-masked per seed 0..4 (the seed effect is shared and cancels)
    "fedavg-masked": [0.0] * 5,
    "fedavg-full": [0.2] * 5,
    "fedirm": [0.05, 0.048, 0.053, 0.051, 0.049],  # consistently ahead: better
    "fedmlp": [0.002, -0.001, 0.0025, 0.0, 0.0015],  # within ±0.003 of it: level within ±0.02
    "noisy": [0.06, -0.05, 0.04, -0.07, 0.01],  # near 0 on average but spread: not resolved
    "rscfed": [-0.1, -0.098, -0.103, -0.101, -0.099],  # consistently behind: worse
}


def hand_runs(settings: tuple[str, ...] = ("s1", "s2"), methods: tuple[str, ...] = tuple(HAND)) -> list[dict]:
    runs = []
    for setting in settings:
        for method in methods:
            for seed, offset in enumerate(HAND[method]):
                r = run(method, seed, 0.6 + 0.02 * seed + offset)
                r["run"]["setting"] = setting
                runs.append(r)
    return runs


def conclusions(report: str) -> str:
    return report[report.index("## Conclusions"):report.index("\n## ", report.index("## Conclusions") + 1)]


def test_conclusions_are_generated_from_the_tests(tmp_path: Path) -> None:
    write_report(hand_runs(), tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    report = (tmp_path / "report.md").read_text()
    assert report.index("runs. Values are") < report.index("## Conclusions") < report.index("## d · s1")  # at the top
    text = conclusions(report)
    # per setting: fedmlp, fedirm, noisy, rscfed against fedavg-masked; top 3 by mAP (fedirm, fedmlp, fedavg-masked)
    # pairwise adds fedirm − fedmlp only (the other two pairs are made already): 5 × 2 metrics × 2 settings
    assert "**20 comparisons** (2 settings × 5 comparisons × 2 metrics)" in text and "n = 5 seeds" in text
    assert "±0.02 mAP, ±0.02 AUROC" in text and "α = 0.05" in text
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    for setting in ("s1", "s2"):
        for metric in ("mAP", "AUROC"):
            where = f"- d · {setting}, {metric}: "
            assert f"{where}**fedirm better than fedavg-masked** (+0.050 [" in text
            assert f"{where}**rscfed worse than fedavg-masked** (-0.100 [" in text
            assert f"{where}**fedmlp level with fedavg-masked within ±0.02** (+0.001 [" in text
            assert f"{where}**fedirm better than fedmlp**" in text
            assert not any(line.startswith(where) and "noisy" in line for line in lines)
    assert len(lines) == 16
    assert "Not resolved: 4 of 20 (d · s1, mAP: noisy − fedavg-masked; d · s1, AUROC: noisy − fedavg-masked; d · s2, mAP:" in text
    rows = [line for line in report.splitlines() if line.startswith("| ") and " − " in line.split("|")[1]]
    assert len(rows) == 20  # the per-setting tables show every member of the family, and only those
    verdicts = [line.strip("|").split("|")[-1].strip() for line in rows]
    assert verdicts.count("better") == 8 and verdicts.count("worse") == 4 and verdicts.count("level within ±0.02") == 4
    assert verdicts.count("not resolved") == 4


def test_the_margin_and_alpha_come_from_the_config(tmp_path: Path) -> None:
    tight = ClaimsConfig(equivalence_margin=EquivalenceMargin(mAP=0.0005, AUROC=0.02))
    write_report(hand_runs(("s1",)), tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png", claims=tight)
    text = conclusions((tmp_path / "report.md").read_text())
    assert "**10 comparisons** (1 setting × 5 comparisons × 2 metrics)" in text and "±0.0005 mAP" in text
    assert "d · s1, mAP: **fedmlp level" not in text and "d · s1, AUROC: **fedmlp level with fedavg-masked within ±0.02**" in text
    summary = summary_frame(hand_runs(("s1",)))
    strict = family(summary, ClaimsConfig(alpha=1e-12))
    assert {c.verdict for c in strict.claims} == {"not resolved"}  # p = 0 needs no spread; none here
    assert from_json(ClaimsConfig, '{"alpha": 0.1}', "report").equivalence_margin.mAP == 0.02


@pytest.mark.parametrize(("text", "key"), [('{"alpha": 0.9}', "report.alpha"), ('{"equivalence_margin": {"mAP": 0}}', "report.equivalence_margin.mAP"),
                                           ('{"equivalence_margin": {"BACC": 0.1}}', "report.equivalence_margin.BACC")])
def test_bad_claims_settings_name_their_key(text: str, key: str) -> None:
    with pytest.raises(FedmlpError, match=f"config key '{key}'"):
        from_json(ClaimsConfig, text, "report")


def test_without_fedavg_masked_the_top_three_are_compared_pairwise(tmp_path: Path) -> None:
    methods = tuple(m for m in HAND if m != "fedavg-masked")
    summary = summary_frame(hand_runs(("s1",), methods))
    assert pairs(summary) == [("fedirm", "fedmlp"), ("fedirm", "noisy"), ("fedmlp", "noisy")]  # by mean mAP, best first
    write_report(hand_runs(("s1",), methods), tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    text = conclusions((tmp_path / "report.md").read_text())
    assert "**6 comparisons** (1 setting × 3 comparisons × 2 metrics)" in text
    assert "fedavg-masked is not in the run (d · s1): there the comparisons are the top 3 pairwise only" in text


def test_one_partial_label_method_makes_no_comparison(tmp_path: Path) -> None:
    write_report(hand_runs(("s1",), ("fedavg-full", "fedmlp")), tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    report = (tmp_path / "report.md").read_text()
    assert "No comparisons" in conclusions(report) and "| comparison |" not in report


SETTINGS = {"iid-k5-a1": 1, "iid-k5-a2": 2, "iid-k5-a3": 3, "dir0.5-k5-a1": 1, "dir0.5-k5-a2": 2}
OFFSETS = {"fedavg-full": 0.3, "fedavg-masked": 0.005, "fedmlp": 0.0, "cbafed": 0.02, "rscfed": -0.1, "fedlsr": -0.01}


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
    assert tables["dir0.5-k5"].cells.shape == (len(OFFSETS), 2)
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
    for heading in ("### d · iid-k5: test mAP", "### d · iid-k5: test AUROC", "### d · dir0.5-k5: mAP difference to fedavg-masked"):
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
    assert iid[1].startswith("classes annotated per client & 1 of 5 & 2 of 5 & 3 of 5 & 1 of 5")  # a labelled header row
    cbafed = next(row for row in iid if row.startswith("CBAFed &"))  # display names, not method ids
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


COSTS = {"fedavg-masked": 3.0, "fedavg-masked-2view": 6.0, "fedirm": 7.5, "fedmlp": 4.5}


def costed_runs(methods: dict[str, float]) -> list[dict]:
    """Two settings, two seeds per method, each run with the counted cost of its method (metrics.json's compute)."""
    runs = []
    for setting in ("iid-k5-a1", "iid-k5-a2"):
        for method, cost in methods.items():
            for seed in range(2):
                r = run(method, seed, 0.6 + 0.01 * seed)
                r["run"]["setting"] = setting
                r["compute"] = {"forward_backward": cost / 3, "forward_only": 0.0, "cost": cost}
                runs.append(r)
    return runs


def test_main_tables_show_each_methods_compute_relative_to_fedavg_masked(tmp_path: Path) -> None:
    runs = costed_runs(COSTS)
    for r in runs:
        check_metrics(r, tmp_path / "metrics.json")
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "rounds.png", latex_path=tmp_path / "table.tex")
    report = (tmp_path / "report.md").read_text()
    section = report[report.index("## d · iid-k5-a1"):report.index("## d · iid-k5-a2")]
    assert "forward-equivalents" in section
    main = section[:section.index("**Bold**")].splitlines()  # the setting's main table
    assert next(line for line in main if line.startswith("| method |")).endswith("| compute (× fedavg-masked) |")
    rows = {line.split("|")[1].strip(): line.split("|")[-2].strip() for line in main if line.startswith("| fed")}
    assert rows == {"fedavg-masked": "1.00", "fedavg-masked-2view": "2.00", "fedirm": "2.50", "fedmlp": "1.50"}
    assert set(pd.read_csv(tmp_path / "summary.csv")["metric"]) == set(METRICS)  # the cost stays out of the paired metrics
    latex = (tmp_path / "table.tex").read_text()
    fedirm = next(row for row in well_formed_latex(latex) if row.startswith("FedIRM &"))
    assert "{compute / fedavg-masked}" in latex and fedirm.replace(" ", "").endswith("&2.50&2.50\\\\")


def test_without_fedavg_masked_there_is_no_compute_column(tmp_path: Path) -> None:
    write_report(costed_runs({m: c for m, c in COSTS.items() if m != "fedavg-masked"}), tmp_path / "summary.csv",
                 tmp_path / "report.md", tmp_path / "rounds.png", latex_path=tmp_path / "table.tex")
    assert "compute" not in (tmp_path / "report.md").read_text() and "compute" not in (tmp_path / "table.tex").read_text()


def test_a_bad_compute_is_refused(tmp_path: Path) -> None:
    r = costed_runs(COSTS)[0]
    r["compute"] = {"cost": "cheap"}
    with pytest.raises(FedmlpError, match="compute: expected"):
        check_metrics(r, tmp_path / "metrics.json")


def test_the_top_methods_are_picked_on_validation_where_every_run_has_it(tmp_path: Path) -> None:
    methods = tuple(m for m in HAND if m != "fedavg-masked")
    runs = hand_runs(("s1",), methods)
    validation = {"rscfed": 0.9, "noisy": 0.8, "fedmlp": 0.7, "fedirm": 0.1}  # the reverse of the test ranking
    for r in runs:
        r["rounds"]["val_mAP"] = [0.0, validation.get(r["run"]["method"], 0.0)]
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    text = conclusions((tmp_path / "report.md").read_text())
    assert "picked on test mAP" not in text
    assert "rscfed − noisy" in (tmp_path / "report.md").read_text() or "noisy − rscfed" in (tmp_path / "report.md").read_text()
    next(r for r in runs if r["run"]["method"] == "fedirm")["rounds"]["val_mAP"] = [0.0, None]  # one run without: picked on test, said so
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png")
    assert "picked on test mAP" in conclusions((tmp_path / "report.md").read_text())


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


def test_table_tex_compiles_with_latex(tmp_path: Path) -> None:
    """table.tex as written compiles in a plain article with booktabs (CI installs a LaTeX from the
    Debian packages and sets FEDMLP_REQUIRE_LATEX=1, so there this cannot skip)."""
    import os
    import shutil
    import subprocess

    if shutil.which("pdflatex") is None:
        if os.environ.get("FEDMLP_REQUIRE_LATEX") == "1":
            pytest.fail("pdflatex not found, and FEDMLP_REQUIRE_LATEX=1")
        pytest.skip("pdflatex not installed (.ci/run installs it)")
    runs = sweep_runs(best_val=True)
    for r in runs:
        r["compute"] = {"forward_backward": 1.0, "forward_only": 0.0, "cost": 3.0}
    write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "fig.png", latex_path=tmp_path / "table.tex")
    (tmp_path / "paper.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                        "\\input{table.tex}\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "paper.pdf").read_bytes()[:5] == b"%PDF-"


def test_html_report_opens_on_the_conclusions_and_figure_with_real_tables(tmp_path: Path) -> None:
    """report.html (the front page of `snakemake --report`): report.md's tables as <table> with a row
    per method, the conclusions and then the per-round figure first, the figures embedded as bytes."""
    import base64
    import re

    from fedmlp.atomic import output_group

    runs = [r for r in hand_runs(("s1",)) if r["run"]["method"] != "noisy"]
    with output_group():  # as the CLI runs it: the figure is still a temporary when the page is written
        write_report(runs, tmp_path / "summary.csv", tmp_path / "report.md", tmp_path / "figures/map_per_round.png",
                     html_path=tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    main = page[page.index("<table>"):page.index("</table>")]
    rows = re.findall(r"<tr>\s*<td>([^<]+)</td>", main)
    assert sorted(rows) == sorted(m for m in HAND if m != "noisy") and "<th>mAP</th>" in main
    order = [page.index(s) for s in ("<h2>Conclusions</h2>", "<h2>Test mAP per round</h2>", "<h2>d · s1</h2>")]
    assert order == sorted(order)
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [(tmp_path / "figures/map_per_round.png").read_bytes()]
    assert "](" not in page and "| ---" not in page  # no Markdown left raw
