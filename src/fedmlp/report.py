"""Collect per-run metrics into ``summary.csv`` (long form), ``report.md`` and a per-round plot."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from fedmlp.atomic import atomic_path, write_text  # noqa: E402
from fedmlp.errors import FedmlpError  # noqa: E402
from fedmlp.metrics import METRICS  # noqa: E402

RUN_KEYS = ("dataset", "setting", "method", "seed")


def summary_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for run in runs:
        missing = [k for k in RUN_KEYS if k not in run.get("run", {})]
        if missing:
            raise FedmlpError(f"metrics file lacks run field(s) {', '.join(missing)}; was it written by 'fedmlp evaluate --run'?")
        for metric in METRICS:
            rows.append({**{k: run["run"][k] for k in RUN_KEYS}, "metric": metric, "value": run["overall"][metric]})
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "metric", "value"])


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot_rounds(runs: list[dict[str, Any]], path: Path) -> None:
    groups = sorted({(r["run"]["dataset"], r["run"]["setting"]) for r in runs})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    for ax, (dataset, setting) in zip(axes[0], groups):
        members = [r for r in runs if (r["run"]["dataset"], r["run"]["setting"]) == (dataset, setting)]
        for method in dict.fromkeys(r["run"]["method"] for r in members):
            curves = [r["rounds"] for r in members if r["run"]["method"] == method]
            rounds = np.asarray(curves[0]["round"])
            values = np.array([np.asarray(c["test_mAP"], dtype=float) for c in curves])
            mean = np.nanmean(values, axis=0)
            (line,) = ax.plot(rounds, mean, label=f"{method} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(rounds, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=line.get_color(), alpha=0.2)
        ax.set(title=f"{dataset} · {setting}", xlabel="round", ylabel="test mAP")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def markdown(runs: list[dict[str, Any]], summary: pd.DataFrame, figure: str) -> str:
    out = [
        "# fedmlp results",
        "",
        f"{len(runs)} runs. Values are the final round's, on the fully labelled test set; mean ± sample "
        "standard deviation over seeds. Per-round curves (below) are for inspection only: no round is "
        "picked on the test set.",
        "",
    ]
    for (dataset, setting), block in summary.groupby(["dataset", "setting"], sort=False):
        methods = list(dict.fromkeys(block["method"]))
        out += [f"## {dataset} · {setting}", ""]
        rows = []
        for method in methods:
            sub = block[block["method"] == method]
            seeds = sub["seed"].nunique()
            rows.append([method, str(seeds)] + [_mean_std(sub.loc[sub["metric"] == m, "value"]) for m in METRICS])
        out += [_table(["method", "seeds", *METRICS], rows), ""]

        members = [r for r in runs if (r["run"]["dataset"], r["run"]["setting"]) == (dataset, setting)]
        classes = list(members[0]["per_class"])
        rows = []
        for method in methods:
            per_run = [r["per_class"] for r in members if r["run"]["method"] == method]
            cells = []
            for c in classes:
                values = pd.Series([p[c]["AUROC"] for p in per_run], dtype=float)
                cells.append(_mean_std(values))
            rows.append([method, *cells])
        out += ["Per-class test AUROC:", "", _table(["method", *classes], rows), ""]
        undefined = sorted({c for r in members for c in r["undefined_classes"]})
        if undefined:
            out += [f"Classes with only one label value in the test set (left out of macro averages): {', '.join(undefined)}.", ""]
    out += ["## Test mAP per round", "", f"![test mAP per round]({figure})", ""]
    return "\n".join(out)


def write_report(runs: list[dict[str, Any]], summary_path: Path, report_path: Path, figure_path: Path) -> None:
    summary = summary_frame(runs)
    with atomic_path(summary_path) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6f")
    plot_rounds(runs, figure_path)
    relative = os.path.relpath(figure_path, report_path.parent)
    write_text(report_path, markdown(runs, summary, relative))
