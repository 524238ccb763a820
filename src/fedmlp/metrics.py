"""Multi-label test metrics, all from scikit-learn (mAP, AUROC and the thresholded metrics of docs/method.md).

Ranking metrics (AP, AUROC) and balanced accuracy are undefined for a class whose test labels are all
0 or all 1; such classes are reported as ``undefined`` and left out of every macro average.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# scikit-learn is imported by the functions that score (about 1 CPU-second, most of it scipy.stats):
# fedmlp.federated imports this module, and FedMLP's pseudolabel stage runs rounds without scoring.

METRICS = ("mAP", "AUROC", "BACC", "F1", "precision", "recall", "hamming_loss")
MACRO_OF = {"mAP": "AP", "AUROC": "AUROC", "BACC": "BACC", "F1": "F1", "precision": "precision", "recall": "recall"}


def defined_classes(y_true: np.ndarray) -> np.ndarray:
    positives = y_true.sum(axis=0)
    return (positives > 0) & (positives < y_true.shape[0])


def ranking_metrics(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, float]:
    """Macro AP and AUROC over defined classes: cheap enough to compute every round."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    ok = defined_classes(y_true)
    if not ok.any():
        return {"mAP": float("nan"), "AUROC": float("nan")}
    return {
        "mAP": float(average_precision_score(y_true[:, ok], y_prob[:, ok], average="macro")),
        "AUROC": float(roc_auc_score(y_true[:, ok], y_prob[:, ok], average="macro")),
    }


def evaluate(y_true: np.ndarray, y_prob: np.ndarray, classes: list[str], threshold: float = 0.5) -> dict[str, Any]:
    """Overall and per-class metrics; predictions are ``y_prob >= threshold``."""
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        hamming_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y_true = np.asarray(y_true).astype(int)
    y_pred = (np.asarray(y_prob) >= threshold).astype(int)
    ok = defined_classes(y_true)
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    per_class: dict[str, dict[str, float | None]] = {}
    for c, name in enumerate(classes):
        row: dict[str, float | None] = {"positives": int(y_true[:, c].sum())}
        if ok[c]:
            row["AP"] = float(average_precision_score(y_true[:, c], y_prob[:, c]))
            row["AUROC"] = float(roc_auc_score(y_true[:, c], y_prob[:, c]))
            row["BACC"] = float(balanced_accuracy_score(y_true[:, c], y_pred[:, c]))
        else:
            row.update(AP=None, AUROC=None, BACC=None)
        row.update(F1=float(f1[c]), precision=float(precision[c]), recall=float(recall[c]))
        per_class[name] = row
    defined = [name for name, good in zip(classes, ok) if good]
    overall = {
        macro: float(np.mean([per_class[name][key] for name in defined])) if defined else float("nan")
        for macro, key in MACRO_OF.items()
    }
    overall["hamming_loss"] = float(hamming_loss(y_true, y_pred))
    return {
        "overall": overall,
        "per_class": per_class,
        "undefined_classes": [name for name, good in zip(classes, ok) if not good],
        "n_images": int(y_true.shape[0]),
        "threshold": threshold,
    }
