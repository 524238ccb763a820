"""Pseudo-label quality against the hidden labels: for diagnostics only, never for training.

Methods that pseudo-label keep a per-client ``state["pseudo"]`` matrix (-1 unlabelled, 0, 1). This
module is the one place that compares it with the true labels of missing classes, which our
synthetic data (and any fully labelled data set) lets us see.
"""

from __future__ import annotations

from typing import Any

import torch

from fedmlp.loader import ClientData
from fedmlp.store import ImageStore


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def pseudo_label_quality(round_number: int, store: ImageStore, clients: list[ClientData], states: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if store.manifest.get("unassessed"):  # custom data: missing classes were never assessed, no truth to compare with
        return []
    rows = []
    for client, state in zip(clients, states):
        truth = store.labels[client.rows]  # hidden labels: read here only
        pseudo = state["pseudo"].numpy()
        for c in torch.nonzero(client.missing).flatten().tolist():
            positive, negative, hidden = pseudo[:, c] == 1, pseudo[:, c] == 0, truth[:, c] == 1
            tau0, tau1 = state.get("thresholds", {}).get(c, (float("nan"), float("nan")))
            counts = {
                "selected_negative": int(negative.sum()),
                "selected_positive": int(positive.sum()),
                "correct_negative": int((negative & ~hidden).sum()),
                "correct_positive": int((positive & hidden).sum()),
                "hidden_positives": int(hidden.sum()),
            }
            rows.append({
                "round": round_number,
                "client": client.client_id,
                "class": store.classes[c],
                "learning_degree": float(state["degree"][c]),
                "tau0": tau0,
                "tau1": tau1,
                **counts,
                **rates(counts),
            })
    return rows


def rates(counts: dict[str, Any]) -> dict[str, float]:
    """Precision of pseudo-negatives and pseudo-positives, and recall of the hidden positives."""
    return {
        "precision_negative": _ratio(counts["correct_negative"], counts["selected_negative"]),
        "precision_positive": _ratio(counts["correct_positive"], counts["selected_positive"]),
        "recall_positive": _ratio(counts["correct_positive"], counts["hidden_positives"]),
    }


COUNTS = ["selected_negative", "selected_positive", "correct_negative", "correct_positive", "hidden_positives"]


def pooled(rows: list[dict[str, Any]]) -> dict[str, float]:
    """One round's rows pooled over clients and classes: counts summed, then the rates."""
    counts = {key: int(sum(r[key] for r in rows)) for key in COUNTS}
    return {**counts, **rates(counts)}


def summary_markdown(artifact: dict, quality: list[dict]) -> str:
    """The pseudolabel stage's human-readable summary: per client and class, and pooled."""
    total = pooled(quality)
    lines = [
        f"# Pseudo-labels before stage-2 round {artifact['round']} ({artifact['method']})",
        "",
        f"Selection: {artifact['config']['selection']}, variant: {artifact['config']['variant']}, "
        f"accumulate: {artifact['config']['accumulate']}, degree scale: {artifact['config'].get('degree_scale', 'raw')}.",
        "",
        "Precision and recall are diagnostics against the hidden labels; training never reads them.",
        "",
        "| client | class | learning degree | τ0 | τ1 | pseudo-neg | pseudo-pos | precision neg | precision pos | recall pos |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: float) -> str:
        return "n/a" if value != value else f"{value:.3f}"

    for r in quality:
        lines.append(f"| {r['client']} | {r['class']} | {fmt(r['learning_degree'])} | {fmt(r['tau0'])} | {fmt(r['tau1'])} | "
                     f"{r['selected_negative']} | {r['selected_positive']} | {fmt(r['precision_negative'])} | "
                     f"{fmt(r['precision_positive'])} | {fmt(r['recall_positive'])} |")
    lines += ["", f"All clients: {total['selected_negative']} pseudo-negatives (precision {fmt(total['precision_negative'])}), "
              f"{total['selected_positive']} pseudo-positives (precision {fmt(total['precision_positive'])}, "
              f"recall of hidden positives {fmt(total['recall_positive'])}).", ""]
    degrees = ", ".join(f"{c} {fmt(v) if v is not None else 'n/a'}" for c, v in artifact["global_learning_degree"].items())
    lines += [f"Global learning degrees: {degrees}.", ""]
    if "global_prior" in artifact:
        prior = ", ".join(f"{c} {fmt(v)}" for c, v in artifact["global_prior"].items())
        lines += [f"Global class prior (the degrees' offset log(π/(1−π))): {prior}.", ""]
    return "\n".join(lines)
