"""Collect per-run metrics into ``summary.csv`` (long form), ``report.md`` and a per-round plot, and
for DVC (``dvc metrics show``, ``dvc exp show``, ``dvc plots show``) a small metrics file and the
per-round curves as CSV."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedmlp.atomic import atomic_path, write_json, write_text  # noqa: E402
from fedmlp.claims import REFERENCE, UPPER_BOUND, Claim, Family, conclusions_markdown, interval, p_text, signed, verdict_text  # noqa: E402
from fedmlp.claims import family as claims_family  # noqa: E402
from fedmlp.config import ClaimsConfig  # noqa: E402
from fedmlp.diagnostics import COUNTS, rates  # noqa: E402
from fedmlp.errors import FedmlpError  # noqa: E402
from fedmlp.figures import look, plot_pseudolabels, plot_rounds, save  # noqa: E402
from fedmlp.methods.registry import display_name  # noqa: E402
from fedmlp.metrics import METRICS  # noqa: E402
from fedmlp.report_html import write_html  # noqa: E402
from fedmlp.sweep import split_name  # noqa: E402
from fedmlp.tuning import SEPARATOR, budget, choose, final_val_map  # noqa: E402

RUN_KEYS = ("dataset", "setting", "method", "seed")
LOWER_IS_BETTER = {"hamming_loss"}
BEST_VAL = "mAP at best val"  # test mAP at the round of the best validation mAP (metrics.json's best_val)
BEST_VAL_LABEL = "test mAP at the best-validation round"
COMPUTE_REFERENCE = "fedavg-masked"  # each method's training cost is shown as a multiple of this method's
COMPUTE = f"compute (× {COMPUTE_REFERENCE})"
COMPUTE_NOTE = (f"*{COMPUTE}*: the method's mean training cost divided by {COMPUTE_REFERENCE}'s, both counted as the runs "
                "trained: model passes over the clients' images per training image per round, in forward-equivalents "
                "(a forward+backward pass counts 3, a forward-only pass such as a teacher's 1); a method's gain over "
                f"{COMPUTE_REFERENCE} may come from that extra compute (compare fedavg-masked-2view, the same loss on two views).")


def summary_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for run in runs:
        missing = [k for k in RUN_KEYS if k not in run.get("run", {})]
        if missing:
            raise FedmlpError(f"metrics file lacks run field(s) {', '.join(missing)}; was it written by 'fedmlp evaluate --run'?")
        for metric in METRICS:
            rows.append({**{k: run["run"][k] for k in RUN_KEYS}, "metric": metric, "value": run["overall"][metric]})
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "metric", "value"])


def best_val_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The same long form for the runs whose metrics have a ``best_val`` (a validation split): their
    test mAP at the best-validation round, as metric BEST_VAL; empty when no run has one."""
    rows = [{**{k: run["run"][k] for k in RUN_KEYS}, "metric": BEST_VAL, "value": run["best_val"]["test_mAP"]}
            for run in runs if run.get("best_val") is not None]
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "metric", "value"]).astype({"value": float})


def relative_compute(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """Each run's counted cost (metrics.json's ``compute``) over the mean cost of the
    :data:`COMPUTE_REFERENCE` runs of its dataset and setting, in summary.csv's long form (metric
    :data:`COMPUTE`; kept out of summary.csv, whose metrics are tested in pairs); empty where the
    reference was not run or the runs carry no compute."""
    rows = [{**{k: run["run"][k] for k in RUN_KEYS}, "cost": run["compute"]["cost"]} for run in runs if "compute" in run]
    costs = pd.DataFrame(rows, columns=[*RUN_KEYS, "cost"]).astype({"cost": float})
    reference = costs[costs["method"] == COMPUTE_REFERENCE].groupby(["dataset", "setting"])["cost"].mean().rename("reference")
    costs = costs.join(reference, on=["dataset", "setting"], how="inner")
    return costs.assign(metric=COMPUTE, value=costs["cost"] / costs["reference"])[[*RUN_KEYS, "metric", "value"]]


def _ratio(values: pd.Series) -> str:
    return f"{values.mean():.2f}" if not values.dropna().empty else "n/a"


def validation_frame(runs: list[dict[str, Any]]) -> pd.DataFrame:
    """The long form of each run's final-round validation mAP (metric ``val_mAP``; NaN without one)."""
    rows = [{**{k: run["run"][k] for k in RUN_KEYS}, "metric": "val_mAP", "value": final_val_map(run)} for run in runs]
    return pd.DataFrame(rows, columns=[*RUN_KEYS, "metric", "value"]).astype({"value": float})


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


def gates_markdown(runs: list[dict[str, Any]]) -> list[str]:
    """The "Gates" section: per setting, method and gate, the gate's rate averaged over the clients (or
    the server's units, e.g. RSCFed's groups) in the first and the last round it was logged in, mean ±
    SD over seeds; nothing when no run logged a gate (metrics.json's ``gates``)."""
    datasets = {r["run"]["dataset"] for r in runs}
    rows = [{"setting": _group_name(r["run"]["dataset"], r["run"]["setting"], datasets), "method": r["run"]["method"],
             "seed": r["run"]["seed"], **g} for r in runs for g in r.get("gates", [])]
    if not rows:
        return []
    keys = ["setting", "method", "gate", "side"]
    per_round = pd.DataFrame(rows).groupby([*keys, "seed", "round"], sort=False)["rate"].mean().reset_index()
    table = []
    for (setting, method, gate, side), block in per_round.groupby(keys, sort=False):
        ends = block.groupby("seed")["round"].agg(["min", "max"])
        cells = []
        for end in ("min", "max"):  # each seed's first and last logged round
            at = block.merge(ends[end].rename("round").reset_index(), on=["seed", "round"])
            cells += ["/".join(map(str, sorted(set(at["round"])))), _mean_std(at["rate"])]
        table.append([setting, method, f"{gate} ({'server' if side == 'server' else 'clients'})", *cells])
    header = ["setting", "method", "gate", "first round", "rate", "last round", "rate"]
    return ["## Gates", "",
            "How often each method's gate passed (docs/baselines.md): the share of samples or entries passing, or for a "
            "server step the largest aggregation weight; averaged over the clients (or groups) of a round, in the first "
            "and the last round the gate was logged in; mean ± SD over seeds.", "",
            _table(header, table), ""]


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


def paired_markdown(claims: list[Claim]) -> list[str]:
    """One setting's comparisons of the family: difference, interval, p-values and verdict."""
    if not claims:
        return []
    header = ["comparison", "metric", "seeds", "mean difference", "95 % CI", "p (paired t)", "p Holm (family)", "p TOST (Holm)",
              "p (Wilcoxon)", "verdict"]
    rows = [[c.pair, c.result.metric, str(c.result.n), signed(c.result.mean), interval(c.result), p_text(c.result.p),
             p_text(c.result.p_holm), p_text(c.result.p_tost_holm), p_text(c.result.p_wilcoxon), verdict_text(c)] for c in claims]
    return ["Paired by seed (runs with the same seed share the round-0 model and data order): the first method minus the "
            "second; 95 % t interval of the mean difference; two-sided paired t-test, Holm-adjusted over the report's whole "
            "family of comparisons (see Conclusions); the equivalence test (TOST) within the margin, Holm-adjusted over the "
            "same family; the two-sided Wilcoxon signed-rank test beside them (no normality assumed, not used for the "
            "verdict; with n seeds its p cannot go below 2/2^n, 0.25 with 3 and 0.0625 with 5).", "", _table(header, rows), ""]


def markdown(runs: list[dict[str, Any]], summary: pd.DataFrame, figure: str, extra: list[str] = (), across: list[str] = (), *,
             fam: Family) -> str:
    out = [
        "# fedmlp results",
        "",
        f"{len(runs)} runs. Values are the final round's, on the fully labelled test set; mean ± sample "
        "standard deviation over seeds. Per-round curves (below) are for inspection only: no round is "
        "picked on the test set.",
        "",
        *conclusions_markdown(fam),
    ]
    for run in runs:  # e.g. FedMLP with oracle pseudo-labels: a diagnostic, not a method
        for warning in run.get("warnings", []):
            out += [f"**Warning** ({run['run']['method']}, {run['run']['setting']}, seed {run['run']['seed']}): {warning}.", ""]
    out += list(across)
    best_val = best_val_frame(runs)
    compute = relative_compute(runs)
    for (dataset, setting), block in summary.groupby(["dataset", "setting"], sort=False):
        methods = list(dict.fromkeys(block["method"]))
        out += [f"## {dataset} · {setting}", ""]
        gap = gap_closed(block)
        cost = compute[(compute["dataset"] == dataset) & (compute["setting"] == setting)].groupby("method")["value"]
        block = pd.concat([block, best_val[(best_val["dataset"] == dataset) & (best_val["setting"] == setting)]])
        columns = [*METRICS] + ([BEST_VAL] if BEST_VAL in set(block["metric"]) else [])
        means = block.groupby(["method", "metric"])["value"].mean()
        best = {m: _best(means.xs(m, level="metric").drop(UPPER_BOUND, errors="ignore"), m) for m in columns}
        rows = []
        for method in methods:
            sub = block[block["method"] == method]
            seeds = sub["seed"].nunique()
            cells = [_bold(_mean_std(sub.loc[sub["metric"] == m, "value"]), method == best[m]) for m in columns]
            rows.append([method, str(seeds), *cells] + ([f"{gap[method]:.0%}"] if gap else [])
                        + ([_ratio(cost.get_group(method)) if method in cost.groups else "n/a"] if cost.ngroups else []))
        header = (["method", "seeds", *[BEST_VAL_LABEL if m == BEST_VAL else m for m in columns]] + (["mAP gap closed"] if gap else [])
                  + ([COMPUTE] if cost.ngroups else []))
        out += [_table(header, rows), "", "**Bold**: the best mean per column among the methods with partial labels "
                f"({UPPER_BOUND}, the fully labelled upper bound, is left out).", ""]
        if BEST_VAL in columns:
            out += [f"*{BEST_VAL_LABEL}*: the test mAP of the round whose validation mAP was highest (the round is "
                    "picked on the validation split, never on the test set); the other columns are the final round's.", ""]
        if gap:
            out += ["*mAP gap closed*: (method − fedavg-partial) / (fedavg-full − fedavg-partial), on mean mAP: "
                    "0% is the naive baseline, 100% the fully labelled upper bound.", ""]
        if cost.ngroups:
            out += [COMPUTE_NOTE, ""]
        out += paired_markdown(fam.of(dataset, setting))

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


@dataclass(frozen=True)
class FamilyTable:
    """One setting family (a setting name without ``-a{n}``) and one metric: methods as rows, the
    annotated classes per client as columns, mean ± sd over seeds; ``best`` marks each column's best
    mean among the methods with partial labels."""

    dataset: str
    family: str
    metric: str
    cells: pd.DataFrame  # method × column label: "mean ± sd"
    best: pd.DataFrame  # the same shape: True where the cell is its column's best
    annotated: tuple[int | None, ...]  # each column's annotated classes per client (None: listed classes)

    @property
    def title(self) -> str:
        return f"{self.dataset} · {self.family}"


def families(summary: pd.DataFrame) -> dict[tuple[str, str], dict[str, int | None]]:
    """(dataset, family) → {setting: annotated classes per client}, by annotated count (config order otherwise)."""
    out: dict[tuple[str, str], dict[str, int | None]] = {}
    for dataset, setting in dict.fromkeys(zip(summary["dataset"], summary["setting"])):
        family, annotated = split_name(setting)
        out.setdefault((dataset, family), {})[setting] = annotated
    return {key: dict(sorted(members.items(), key=lambda item: -1 if item[1] is None else item[1])) for key, members in out.items()}


def _column(annotated: int | None, setting: str, n_classes: int) -> str:
    """A family table's column label: the annotated classes per client and the missing rate."""
    return setting if annotated is None else f"{annotated} ({1 - annotated / n_classes:.0%} missing)"


def family_tables(long: pd.DataFrame, metric: str, n_classes: dict[str, int], cell: Callable[[pd.Series], str] = _mean_std) -> list[FamilyTable]:
    """One table per setting family for ``metric`` of ``long`` (long form, as summary.csv), each cell
    the ``cell`` of its values."""
    rows = long[long["metric"] == metric]
    tables = []
    for (dataset, family), members in families(long).items():
        methods = list(dict.fromkeys(long.loc[long["setting"].isin(members) & (long["dataset"] == dataset), "method"]))
        columns = {setting: _column(annotated, setting, n_classes[dataset]) for setting, annotated in members.items()}
        cells = pd.DataFrame("n/a", index=methods, columns=list(columns.values()))
        best = pd.DataFrame(False, index=methods, columns=list(columns.values()))
        for setting, column in columns.items():
            block = rows[(rows["dataset"] == dataset) & (rows["setting"] == setting)]
            for method, values in block.groupby("method", sort=False)["value"]:
                cells.loc[method, column] = cell(values)
            winner = _best(block.groupby("method")["value"].mean().drop(UPPER_BOUND, errors="ignore"), metric)
            if winner is not None:
                best.loc[winner, column] = True
        tables.append(FamilyTable(dataset, family, metric, cells, best, tuple(members.values())))
    return tables


def family_markdown(table: FamilyTable, label: str) -> list[str]:
    header = ["method", *table.cells.columns]
    rows = [[method, *(_bold(c, b) for c, b in zip(table.cells.loc[method], table.best.loc[method]))] for method in table.cells.index]
    return [f"### {table.title}: {label}", "", _table(header, rows), ""]


def difference_markdown(fam: Family, dataset: str, family: str, members: dict[str, int | None], n_classes: int,
                        metric: str = "mAP") -> list[str]:
    """Per setting family: each method's paired difference to fedavg-masked per setting, with its
    family-wide Holm-adjusted p and verdict (the same comparisons as the settings' sections)."""
    header, cells = ["method"], {}
    for setting, annotated in members.items():
        header.append(_column(annotated, setting, n_classes))
        for c in fam.of(dataset, setting):
            if c.result.reference == REFERENCE and c.result.metric == metric:
                cells.setdefault(c.result.method, {})[header[-1]] = f"{signed(c.result.mean)} ({p_text(c.result.p_holm)}; {verdict_text(c)})"
    if not cells:
        return []
    rows = [[method, *(by_column.get(c, "n/a") for c in header[1:])] for method, by_column in cells.items()]
    return [f"### {dataset} · {family}: {metric} difference to {REFERENCE}", "",
            f"Mean over seeds of (method − {REFERENCE}), paired by seed; in parentheses the paired t-test's p, Holm-adjusted "
            "over the report's whole family (see Conclusions), and the verdict (each setting's section has the intervals "
            "and the equivalence test).", "", _table(header, rows), ""]


def across_markdown(summary: pd.DataFrame, best_val: pd.DataFrame, n_classes: dict[str, int], figure: str, fam: Family) -> list[str]:
    """The section comparing settings: per family, mAP and AUROC (and, with a validation split, the
    test mAP at the best-validation round) per missing rate, the differences to fedavg-masked, the figure."""
    out = ["## Across settings", "",
           "One table per setting family (partition and clients); columns are the classes each client annotates "
           "(of all classes: the missing rate); cells mean ± sd over seeds of the final round's test metric. "
           f"**Bold**: each column's best mean among the methods with partial labels ({UPPER_BOUND} left out).", ""]
    labels = {"mAP": "test mAP", "AUROC": "test AUROC", BEST_VAL: BEST_VAL_LABEL}
    tables = {metric: family_tables(summary, metric, n_classes) for metric in ("mAP", "AUROC")}
    if not best_val.empty:
        tables[BEST_VAL] = family_tables(best_val, BEST_VAL, n_classes)
    for (dataset, family), members in families(summary).items():
        for metric, by_family in tables.items():
            out += [line for t in by_family if (t.dataset, t.family) == (dataset, family) for line in family_markdown(t, labels[metric])]
        out += difference_markdown(fam, dataset, family, members, n_classes[dataset])
    out += [f"![test mAP against annotated classes per client]({figure})", ""]
    return out


def plot_annotated(summary: pd.DataFrame, path: Path, metric: str = "mAP") -> None:
    """Test ``metric`` against annotated classes per client: a line per method (mean over seeds, error
    bar one sd), a panel per setting family; methods are shifted a little sideways to stay apart."""
    groups = families(summary)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.5), squeeze=False)
    rows = summary[summary["metric"] == metric]
    for ax, ((dataset, family), members) in zip(axes[0], groups.items()):
        counted = {setting: annotated for setting, annotated in members.items() if annotated is not None}
        block = rows[(rows["dataset"] == dataset) & rows["setting"].isin(counted)]
        block = block.assign(annotated=block["setting"].map(counted))
        methods = list(dict.fromkeys(block["method"]))
        shifts = np.linspace(-0.15, 0.15, len(methods)) if len(methods) > 1 else [0.0]
        for method, shift in zip(methods, shifts):
            agg = block[block["method"] == method].groupby("annotated")["value"].agg(["mean", "std"])
            style = look(method)
            ax.errorbar(agg.index + shift, agg["mean"], yerr=agg["std"].fillna(0), color=style.color, marker=style.marker,
                        markersize=4, capsize=3, linestyle=style.linestyle, label=style.label)
        ax.set(title=f"{dataset} · {family}", xlabel="annotated classes per client", ylabel=f"test {metric}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    save(fig, path)


def latex(summary: pd.DataFrame, best_val: pd.DataFrame, n_classes: dict[str, int], compute: pd.DataFrame | None = None) -> str:
    """The family tables as LaTeX for a paper (booktabs rules; needs ``\\usepackage{booktabs}``): one
    table per family, mAP and AUROC side by side (and the best-validation test mAP when there is one),
    each column's best among the partial-label methods in bold; with ``compute``
    (:func:`relative_compute`) each method's cost as a multiple of fedavg-masked's beside them."""
    names = {"mAP": "mAP", "AUROC": "AUROC", BEST_VAL: "mAP at best val.", COMPUTE: f"compute / {COMPUTE_REFERENCE}"}  # escaped: plain text
    metrics = {"mAP": summary, "AUROC": summary} | ({BEST_VAL: best_val} if not best_val.empty else {})
    by_family: dict[tuple[str, str], list[FamilyTable]] = {}
    for metric, long in metrics.items():
        for table in family_tables(long, metric, n_classes):
            by_family.setdefault((table.dataset, table.family), []).append(table)
    for table in family_tables(compute, COMPUTE, n_classes, cell=_ratio) if compute is not None and not compute.empty else ():
        by_family.setdefault((table.dataset, table.family), []).append(replace(table, best=table.best & False))  # nothing bold
    out = ["% Written by `fedmlp report`; needs \\usepackage{booktabs}. Mean $\\pm$ sd over seeds of the final round's test metric;",
           f"% bold: each column's best among the methods with partial labels ({UPPER_BOUND}, the fully labelled upper bound, left out).", ""]
    for (dataset, family), parts in by_family.items():
        keys = [names[p.metric] for p in parts]
        short = [[c if a is None else f"{a} of {n_classes[dataset]}" for c, a in zip(p.cells.columns, p.annotated)] for p in parts]
        cells = pd.concat([p.cells.set_axis(c, axis=1) for p, c in zip(parts, short)], axis=1, keys=keys).fillna("n/a")
        best = pd.concat([p.best.set_axis(c, axis=1) for p, c in zip(parts, short)], axis=1, keys=keys).fillna(False).astype(bool)
        cells.columns.names = best.columns.names = ["", "classes annotated per client"]  # labels the second header row
        cells.index = best.index = [display_name(m) for m in cells.index]
        body = cells.map(lambda cell: cell.replace(" ± ", r" $\pm$ "))
        styler = body.style.apply(lambda _, best=best: best.map(lambda on: "textbf:--rwrap;" if on else ""), axis=None)
        styler = styler.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
        what = "Test mAP, AUROC and the test mAP at the best-validation round" if BEST_VAL in {p.metric for p in parts} else "Test mAP and AUROC"
        caption = (f"{what} on {dataset}, {family}; columns: the classes each client annotates, a of {n_classes[dataset]} "
                   f"(missing rate 1 $-$ a/{n_classes[dataset]}); mean $\\pm$ sd over seeds."
                   + (f" Compute: mean training cost as a multiple of {COMPUTE_REFERENCE}'s (forward-equivalents per training "
                      "image per round, a forward+backward pass 3, a forward-only pass 1)." if COMPUTE in {p.metric for p in parts} else ""))
        out.append(styler.to_latex(hrules=True, column_format="l" + "r" * cells.shape[1], multicol_align="c", caption=caption,
                                   label=f"tab:{dataset}-{family}", position_float="centering"))
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


def tuning_markdown(table: pd.DataFrame) -> list[str]:
    """Every grid point's validation mAP per setting and method, the chosen one in bold, and the
    number of points each method had."""
    if table.empty:
        return []
    out = ["## Tuning on validation", "",
           "Each tuned method ran every point of its grid (config key `tuning`); per setting, the point with the highest "
           "mean final-round validation mAP over seeds is chosen (never the test set), and the tables above show the "
           "chosen point's test scores under the method's name. Every point and seed is in `tuning.csv`.", ""]
    rows = []
    points = budget(table)
    for (dataset, setting, method, point), group in table.groupby(["dataset", "setting", "method", "point"], sort=False):
        cells = [setting, method, str(points[(dataset, setting, method)]), point.split(SEPARATOR, 1)[1], _mean_std(group["val_mAP"])]
        rows.append([_bold(c, bool(group["chosen"].iloc[0])) for c in cells])
    out += [_table(["setting", "method", "points", "settings", "validation mAP"], rows), "",
            "**Bold**: the chosen point. Methods not listed ran one point, their config's settings.", ""]
    return out


def write_report(
    runs: list[dict[str, Any]], summary_path: Path, report_path: Path, figure_path: Path, diagnostics: pd.DataFrame | None = None,
    metrics_path: Path | None = None, plot_data: Path | None = None, latex_path: Path | None = None,
    claims: ClaimsConfig | None = None, tuning_path: Path | None = None, html_path: Path | None = None,
) -> None:
    """Write summary.csv, the mAP plot and report.md; with diagnostics also pseudolabels.png beside the plot;
    with several settings also the section across settings and its figure map_by_annotated.png beside the
    plot; with ``latex_path`` the family tables as LaTeX; with ``metrics_path`` and ``plot_data`` DVC's
    metrics file and per-round curves; ``claims``: the tests' α and margins (the defaults without). Runs
    of tuning grid points are reduced to each method's chosen point first (fedmlp.tuning);
    ``tuning_path`` receives every point; ``html_path`` receives report.md as one HTML page (fedmlp.report_html)."""
    runs, tuned = choose(runs)
    if tuning_path is not None:
        with atomic_path(tuning_path) as tmp:
            tuned.to_csv(tmp, index=False, float_format="%.6f")
    if diagnostics is not None and not tuned.empty:  # diagnostics of the chosen points, under their method's name
        chosen = dict(zip(tuned.loc[tuned["chosen"], "point"], tuned.loc[tuned["chosen"], "method"]))  # point → method
        kept = ~diagnostics["method"].str.contains(SEPARATOR, regex=False) | diagnostics["method"].isin(chosen)
        diagnostics = diagnostics[kept].assign(method=lambda d: d["method"].replace(chosen))
    summary = summary_frame(runs)
    fam = claims_family(summary, claims or ClaimsConfig(), validation_frame(runs))
    best_val = best_val_frame(runs)
    n_classes = {run["run"]["dataset"]: len(run["per_class"]) for run in runs}
    if metrics_path is not None:
        write_json(metrics_path, dvc_metrics(summary))
    if plot_data is not None:
        write_plot_data(runs, plot_data)
    with atomic_path(summary_path) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6f")
    if latex_path is not None:
        write_text(latex_path, latex(summary, best_val, n_classes, relative_compute(runs)))
    plot_rounds(runs, figure_path)
    across: list[str] = []
    if summary[["dataset", "setting"]].drop_duplicates().shape[0] > 1:
        annotated_path = figure_path.with_name("map_by_annotated.png")
        plot_annotated(summary, annotated_path)
        across = across_markdown(summary, best_val, n_classes, os.path.relpath(annotated_path, report_path.parent), fam)
    extra: list[str] = []
    if diagnostics is not None and not diagnostics.empty:
        pooled = pooled_diagnostics(diagnostics)
        pseudo_path = figure_path.with_name("pseudolabels.png")
        plot_pseudolabels(pooled, pseudo_path)
        extra = diagnostics_markdown(pooled, os.path.relpath(pseudo_path, report_path.parent))
    extra += tuning_markdown(tuned)
    extra += gates_markdown(runs)
    text = markdown(runs, summary, os.path.relpath(figure_path, report_path.parent), extra, across, fam=fam)
    write_text(report_path, text)
    if html_path is not None:
        write_html(text, report_path.parent, html_path)
