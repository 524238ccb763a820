"""Collect per-run metrics into ``summary.csv`` (long form), ``report.md`` and a per-round plot, and
for DVC (``dvc metrics show``, ``dvc exp show``, ``dvc plots show``) a small metrics file and the
per-round curves as CSV."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedmlp.atomic import atomic_path, write_json, write_text  # noqa: E402
from fedmlp.diagnostics import COUNTS, rates  # noqa: E402
from fedmlp.errors import FedmlpError  # noqa: E402
from fedmlp.metrics import METRICS  # noqa: E402
from fedmlp.statistics import compare_to  # noqa: E402

RUN_KEYS = ("dataset", "setting", "method", "seed")
REFERENCE = "fedmlp"  # the method every other is compared with, when it is in the run
LOWER_IS_BETTER = {"hamming_loss"}


def summary_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for run in runs:
        missing = [k for k in RUN_KEYS if k not in run.get("run", {})]
        if missing:
            raise FedmlpError(f"metrics file lacks run field(s) {', '.join(missing)}; was it written by 'fedmlp evaluate --run'?")
        for metric in METRICS:
            rows.append({**{k: run["run"][k] for k in RUN_KEYS}, "metric": metric, "value": run["overall"][metric]})
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "metric", "value"])


def _mean_std(values: pd.Series, digits: int = 3) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


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


def gap_closed(block: pd.DataFrame) -> dict[str, float]:
    """Share of the fedavg-partial → fedavg-full mAP gap each method closes (empty without both)."""
    means = block[block["metric"] == "mAP"].groupby("method")["value"].mean()
    if not {"fedavg-partial", "fedavg-full"} <= set(means.index) or means["fedavg-full"] == means["fedavg-partial"]:
        return {}
    low, high = means["fedavg-partial"], means["fedavg-full"]
    return {method: float((value - low) / (high - low)) for method, value in means.items()}


def pooled_diagnostics(diagnostics: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, setting, method, seed and round: counts summed over clients and classes, then rates."""
    keys = ["dataset", "setting", "method", "seed", "round"]
    pooled = diagnostics.groupby(keys, sort=False)[COUNTS].sum().reset_index()
    return pd.concat([pooled, pd.DataFrame([rates(row) for row in pooled.to_dict("records")])], axis=1)


def plot_pseudolabels(pooled: pd.DataFrame, path: Path) -> None:
    panels = [("precision_positive", "precision of pseudo-positives"), ("precision_negative", "precision of pseudo-negatives"),
              ("recall_positive", "recall of hidden positives")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        for (setting, method), group in pooled.groupby(["setting", "method"], sort=False):
            curve = group.groupby("round")[column].agg(["mean", "min", "max"])
            (line,) = ax.plot(curve.index, curve["mean"], marker=".", label=f"{method} · {setting}")
            ax.fill_between(curve.index, curve["min"], curve["max"], color=line.get_color(), alpha=0.2)
        ax.set(title=title, xlabel="round", ylim=(0, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def diagnostics_markdown(pooled: pd.DataFrame, figure: str) -> list[str]:
    out = [
        "## Pseudo-labels (diagnostics against the hidden labels)",
        "",
        "Counts are summed over clients and missing classes; precision and recall are pooled the same way; "
        "mean ± std over seeds, in the first and the last stage-2 round. Training never reads hidden labels; "
        "this section does.",
        "",
    ]
    header = ["setting", "method", "round", "pseudo-negatives", "precision", "pseudo-positives", "precision", "recall of hidden positives"]
    rows = []
    for (setting, method), group in pooled.groupby(["setting", "method"], sort=False):
        for round_number in sorted({group["round"].min(), group["round"].max()}):
            at = group[group["round"] == round_number]
            rows.append([setting, method, str(round_number), _mean_std(at["selected_negative"].astype(float), 0),
                         _mean_std(at["precision_negative"]), _mean_std(at["selected_positive"].astype(float), 0),
                         _mean_std(at["precision_positive"]), _mean_std(at["recall_positive"])])
    out += [_table(header, rows), "", f"![pseudo-label quality per round]({figure})", ""]
    return out


def _best(means: pd.Series, metric: str) -> str | None:
    if means.dropna().empty:
        return None
    return str(means.idxmin() if metric in LOWER_IS_BETTER else means.idxmax())


def _bold(cell: str, on: bool) -> str:
    return f"**{cell}**" if on else cell


def paired_markdown(block: pd.DataFrame) -> list[str]:
    """Each method against FedMLP, paired by seed: mean difference, 95 % interval, p-values."""
    if REFERENCE not in set(block["method"]):
        return []
    header = ["method", "metric", "seeds", f"difference to {REFERENCE}", "95 % CI", "p (paired t)", "p (Holm)"]
    rows = []
    for metric in ("mAP", "AUROC"):
        for r in compare_to(block, REFERENCE, metric):
            ci = "n/a" if np.isnan(r.low) else f"[{r.low:+.3f}, {r.high:+.3f}]"
            p = "n/a" if np.isnan(r.p) else f"{r.p:.3g}"
            p_holm = "n/a" if np.isnan(r.p_holm) else f"{r.p_holm:.3g}"
            rows.append([r.method, metric, str(r.n), f"{r.mean:+.3f}", ci, p, p_holm])
    return [f"Paired by seed (runs with the same seed share the round-0 model and data order): each method minus "
            f"{REFERENCE}; 95 % t interval of the mean difference; two-sided paired t-test, and Holm-adjusted over "
            "the methods per metric. With 3 seeds only large, consistent differences reach p < 0.05.", "",
            _table(header, rows), ""]


def markdown(runs: list[dict[str, Any]], summary: pd.DataFrame, figure: str, extra: list[str] = ()) -> str:
    out = [
        "# fedmlp results",
        "",
        f"{len(runs)} runs. Values are the final round's, on the fully labelled test set; mean ± sample "
        "standard deviation over seeds. Per-round curves (below) are for inspection only: no round is "
        "picked on the test set.",
        "",
    ]
    for run in runs:  # e.g. FedMLP with oracle pseudo-labels: a diagnostic, not a method
        for warning in run.get("warnings", []):
            out += [f"**Warning** ({run['run']['method']}, {run['run']['setting']}, seed {run['run']['seed']}): {warning}.", ""]
    for (dataset, setting), block in summary.groupby(["dataset", "setting"], sort=False):
        methods = list(dict.fromkeys(block["method"]))
        out += [f"## {dataset} · {setting}", ""]
        gap = gap_closed(block)
        means = block.groupby(["method", "metric"])["value"].mean()
        best = {m: _best(means.xs(m, level="metric").drop("fedavg-full", errors="ignore"), m) for m in METRICS}
        rows = []
        for method in methods:
            sub = block[block["method"] == method]
            seeds = sub["seed"].nunique()
            cells = [_bold(_mean_std(sub.loc[sub["metric"] == m, "value"]), method == best[m]) for m in METRICS]
            rows.append([method, str(seeds), *cells] + ([f"{gap[method]:.0%}"] if gap else []))
        header = ["method", "seeds", *METRICS] + (["mAP gap closed"] if gap else [])
        out += [_table(header, rows), "", "**Bold**: the best mean per column among the methods with partial labels "
                "(fedavg-full, the fully labelled upper bound, is left out).", ""]
        if gap:
            out += ["*mAP gap closed*: (method − fedavg-partial) / (fedavg-full − fedavg-partial), on mean mAP: "
                    "0% is the naive baseline, 100% the fully labelled upper bound.", ""]
        out += paired_markdown(block)

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
    out += list(extra)
    return "\n".join(out)


DVC_METRICS = ("mAP", "AUROC")  # the headline metrics DVC shows per experiment


def _group_name(dataset: str, setting: str, datasets: set[str]) -> str:
    """A setting's key in the DVC files: the setting alone, unless the runs span several datasets."""
    return setting if len(datasets) == 1 else f"{dataset}-{setting}"


def _float_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None  # JSON has no NaN


def dvc_metrics(summary: pd.DataFrame) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """Per setting and method: mean and sample SD over seeds of the final-round mAP and AUROC, and the
    number of seeds (null where undefined). DVC flattens the keys (``iid-k5-a1.fedmlp.mAP_mean``)."""
    datasets = set(summary["dataset"])
    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for (dataset, setting, method), block in summary.groupby(["dataset", "setting", "method"], sort=False):
        entry: dict[str, float | int | None] = {}
        for metric in DVC_METRICS:
            values = block.loc[block["metric"] == metric, "value"].astype(float).dropna()
            entry[f"{metric}_mean"] = _float_or_none(values.mean()) if len(values) else None
            entry[f"{metric}_sd"] = _float_or_none(values.std(ddof=1)) if len(values) > 1 else None
        entry["n_seeds"] = int(block["seed"].nunique())
        out.setdefault(_group_name(dataset, setting, datasets), {})[method] = entry
    return out


def round_curves(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Test mAP and AUROC per setting, method and round, mean over seeds, in long form; rounds without
    a test score (``train.eval_every``) are left out."""
    datasets = {r["run"]["dataset"] for r in runs}
    groups: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for run in runs:
        key = (_group_name(run["run"]["dataset"], run["run"]["setting"], datasets), run["run"]["method"])
        rounds = run["rounds"]
        groups.setdefault(key, []).append(pd.DataFrame(
            {"round": rounds["round"], "test_mAP": rounds["test_mAP"], "test_AUROC": rounds["test_AUROC"]}, dtype=float))
    curves = []
    for (setting, method), frames in groups.items():
        mean = pd.concat(frames).groupby("round").mean().dropna(how="all").reset_index()
        curves.append(mean.assign(round=mean["round"].astype(int), setting=setting, method=method, n_seeds=len(frames)))
    columns = ["setting", "method", "round", "test_mAP", "test_AUROC", "n_seeds"]
    return pd.concat(curves)[columns] if curves else pd.DataFrame(columns=columns)


def write_plot_data(runs: list[dict[str, Any]], path: Path) -> None:
    """The per-round curves as one CSV: ``dvc plots show`` draws a line per setting and method (the
    template in .dvc/plots/ colours by them), whatever the methods of the experiment are."""
    with atomic_path(path) as tmp:
        round_curves(runs).to_csv(tmp, index=False, float_format="%.6f")


def write_report(
    runs: list[dict[str, Any]], summary_path: Path, report_path: Path, figure_path: Path, diagnostics: pd.DataFrame | None = None,
    metrics_path: Path | None = None, plot_data: Path | None = None,
) -> None:
    """Write summary.csv, the mAP plot and report.md; with diagnostics also pseudolabels.png beside the plot;
    with ``metrics_path`` and ``plot_data`` DVC's metrics file and per-round curves."""
    summary = summary_frame(runs)
    if metrics_path is not None:
        write_json(metrics_path, dvc_metrics(summary))
    if plot_data is not None:
        write_plot_data(runs, plot_data)
    with atomic_path(summary_path) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6f")
    plot_rounds(runs, figure_path)
    extra: list[str] = []
    if diagnostics is not None and not diagnostics.empty:
        pooled = pooled_diagnostics(diagnostics)
        pseudo_path = figure_path.with_name("pseudolabels.png")
        plot_pseudolabels(pooled, pseudo_path)
        extra = diagnostics_markdown(pooled, os.path.relpath(pseudo_path, report_path.parent))
    write_text(report_path, markdown(runs, summary, os.path.relpath(figure_path, report_path.parent), extra))
