"""The report's figures: how each method is drawn, the per-round curves and the pseudo-labels' quality.

Every method keeps one look across figures and settings, chosen from its position in the registry's
sorted list (so a method looks the same in every report): a colour of the Okabe–Ito palette
(distinguishable with the common colour-vision deficiencies), a line style and a marker. Eight colours
times three line styles and twelve markers keep as many methods apart as the registry can hold in
practice. Figures are written as PNG at print resolution and as SVG (vector, reproducible bytes) beside
it; SVG rather than PDF because DVC's plots show images of those kinds only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedmlp.atomic import atomic_path  # noqa: E402
from fedmlp.methods import registry  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd

# Okabe & Ito (2008), "Color Universal Design": black, orange, sky blue, bluish green, yellow, blue,
# vermillion, reddish purple; yellow is darkened a little to stay visible on white.
PALETTE = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#C8B400", "#0072B2", "#D55E00", "#CC79A7")
LINESTYLES = ("-", "--", ":")
MARKERS = "osD^v<>pPX*h"
DPI = 300  # the PNG's resolution: print quality at the figure's size


@dataclass(frozen=True)
class Look:
    label: str
    color: str
    linestyle: str
    marker: str


def look(method: str) -> Look:
    """How ``method`` is drawn: fixed by its place among the registered methods (others after them)."""
    known = registry.names()
    index = known.index(method) if method in known else len(known) + sum(map(ord, method)) % 97
    return Look(registry.display_name(method), PALETTE[index % len(PALETTE)],
                LINESTYLES[(index // len(PALETTE)) % len(LINESTYLES)], MARKERS[index % len(MARKERS)])


def save(fig: Figure, png: Path) -> None:
    """Write ``fig`` as ``png`` and, beside it, as an SVG of the same name (each written atomically;
    no date in the SVG and fixed element ids, so the same figure gives the same bytes)."""
    for path, kind in ((png, "png"), (png.with_suffix(".svg"), "svg")):
        with atomic_path(path) as tmp, plt.rc_context({"svg.hashsalt": "fedmlp"}):
            fig.savefig(tmp, dpi=DPI, format=kind, bbox_inches="tight", metadata={"Date": None} if kind == "svg" else None)
    plt.close(fig)


def rounds_figure(runs: list[dict[str, Any]], column: str = "test_mAP", ylabel: str = "test mAP") -> Figure:
    """One panel per (dataset, setting); per method the mean over seeds of ``column`` drawn through
    the rounds that were scored (``train.eval_every`` leaves the others without a score), a marker on
    each, and the range over seeds shaded."""
    groups = sorted({(r["run"]["dataset"], r["run"]["setting"]) for r in runs})
    columns = min(len(groups), 3)
    rows = -(-len(groups) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows), squeeze=False, sharey=True)
    for ax, (dataset, setting) in zip(axes.flat, groups):
        members = [r for r in runs if (r["run"]["dataset"], r["run"]["setting"]) == (dataset, setting)]
        for method in dict.fromkeys(r["run"]["method"] for r in members):
            curves = [r["rounds"] for r in members if r["run"]["method"] == method]
            rounds = np.asarray(curves[0]["round"], dtype=float)
            values = np.array([np.asarray(c[column], dtype=float) for c in curves])
            scored = ~np.all(np.isnan(values), axis=0)
            if not scored.any():
                continue
            x, mean = rounds[scored], np.nanmean(values[:, scored], axis=0)
            style = look(method)
            ax.plot(x, mean, color=style.color, linestyle=style.linestyle, marker=style.marker, markersize=3.5,
                    linewidth=1.4, label=f"{style.label} (n={len(curves)})", gid=method)
            if len(curves) > 1:
                ax.fill_between(x, np.nanmin(values[:, scored], axis=0), np.nanmax(values[:, scored], axis=0),
                                color=style.color, alpha=0.08, linewidth=0)
        ax.set_title(f"{dataset} · {setting}", fontsize=10)
        ax.set_xlabel("communication round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, max(1, len(labels))), fontsize=8,
               frameon=False)
    fig.tight_layout()
    return fig


def plot_rounds(runs: list[dict[str, Any]], path: Path) -> None:
    """The per-round test mAP figure (PNG and SVG)."""
    save(rounds_figure(runs), path)


PSEUDO_LABEL_PANELS = (("precision_positive", "precision of pseudo-positives"), ("precision_negative", "precision of pseudo-negatives"),
                       ("recall_positive", "recall of hidden positives"))


def pseudolabels_figure(pooled: pd.DataFrame) -> Figure:
    """A row per setting, a column per rate (:data:`PSEUDO_LABEL_PANELS`); per method the mean over
    seeds through the stage-2 rounds and the range over seeds shaded. One legend for the figure,
    below the panels, so that no curve is hidden behind it however many settings there are."""
    settings = list(dict.fromkeys(pooled["setting"]))
    fig, axes = plt.subplots(len(settings), len(PSEUDO_LABEL_PANELS), figsize=(15, 3.4 * len(settings) + 0.6), squeeze=False,
                             sharex=True, sharey=True)
    for row, setting in zip(axes, settings):
        for ax, (column, title) in zip(row, PSEUDO_LABEL_PANELS):
            for method, group in pooled[pooled["setting"] == setting].groupby("method", sort=False):
                curve = group.groupby("round")[column].agg(["mean", "min", "max"])
                style = look(method)
                ax.plot(curve.index, curve["mean"], color=style.color, linestyle=style.linestyle, marker=style.marker, markersize=3,
                        label=style.label, gid=method)
                ax.fill_between(curve.index, curve["min"], curve["max"], color=style.color, alpha=0.1, linewidth=0)
            ax.set_title(f"{title} · {setting}" if len(settings) > 1 else title, fontsize=10)
            ax.set_ylim(0, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("round")
    legend = {}  # label → handle, over every panel (a method may be missing from a setting)
    for ax in axes[:, 0]:
        legend.update({label: handle for handle, label in zip(*ax.get_legend_handles_labels()) if label not in legend})
    fig.legend(list(legend.values()), list(legend), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, max(1, len(legend))),
               fontsize=9, frameon=False)
    fig.tight_layout()
    return fig


def plot_pseudolabels(pooled: pd.DataFrame, path: Path) -> None:
    """The pseudo-label quality figure (PNG and SVG)."""
    save(pseudolabels_figure(pooled), path)
