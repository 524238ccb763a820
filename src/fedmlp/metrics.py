"""Multi-label test metrics, all from scikit-learn (mAP, AUROC and the thresholded metrics of docs/method.md),
and what is chosen on the validation set: per-class thresholds and the best-validation round.

Ranking metrics (AP, AUROC) and balanced accuracy are undefined for a class whose test labels are all
0 or all 1; such classes are reported as ``undefined`` and left out of every macro average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# scikit-learn is imported by the functions that score (about 1 CPU-second, most of it scipy.stats):
# fedmlp.federated imports this module, and FedMLP's pseudolabel stage runs rounds without scoring.

METRICS = ("mAP", "AUROC", "BACC", "F1", "precision", "recall", "hamming_loss")
FIXED_THRESHOLD = 0.5  # without a validation set, and for a class without validation positives
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


def f1_thresholds(y_true: np.ndarray, y_prob: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Per class, the threshold that maximises F1 of ``y_prob >= t`` on these (validation) labels (ties:
    the lowest); :data:`FIXED_THRESHOLD` for a class without positives, which has no F1 to maximise.
    Chosen per method on its own probabilities, so that a method whose logits are shifted (FedMLP's
    logit adjustment) is not judged at a cut-off that suits another."""
    from sklearn.metrics import precision_recall_curve

    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    thresholds = {}
    for c, name in enumerate(classes):
        if not y_true[:, c].any():
            thresholds[name] = FIXED_THRESHOLD
            continue
        precision, recall, cuts = precision_recall_curve(y_true[:, c], y_prob[:, c])
        precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision), where=precision + recall > 0)
        thresholds[name] = float(cuts[int(np.argmax(f1))])
    return thresholds


def best_val_round(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The scored round with the highest validation mAP (ties: the earliest) and that round's test
    scores, from the per-round records; None without validation scores."""
    scored = [r for r in rounds if math.isfinite(float(r["val_mAP"]))]
    if not scored:
        return None
    best = min(scored, key=lambda r: (-float(r["val_mAP"]), int(r["round"])))
    return {"round": int(best["round"]), "val_mAP": float(best["val_mAP"]), "test_mAP": float(best["test_mAP"]),
            "test_AUROC": float(best["test_AUROC"])}


def undefined_warnings(result: Mapping[str, Any]) -> list[str]:
    """One warning per class of an :func:`evaluate` result that its macro averages leave out, naming
    the class and why; and one more when that is every class (the averages are then NaN)."""
    n, per_class, undefined = result["n_images"], result["per_class"], result["undefined_classes"]
    messages = []
    for name in undefined:
        which = "no positive" if per_class[name]["positives"] == 0 else "no negative"
        messages.append(f"class {name} has {which} in the test set ({n} images): its AP, AUROC and BACC are undefined "
                        "and left out of the mean")
    if undefined and len(undefined) == len(per_class):
        messages.append("no class has both label values in the test set: mAP, AUROC, BACC, F1, precision and recall are NaN")
    return messages


def evaluate(y_true: np.ndarray, y_prob: np.ndarray, classes: list[str], thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Overall and per-class metrics; predictions are ``y_prob >= thresholds[class]`` (default
    :data:`FIXED_THRESHOLD` for every class)."""
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        hamming_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    thresholds = dict(thresholds) if thresholds is not None else dict.fromkeys(classes, FIXED_THRESHOLD)
    y_true = np.asarray(y_true).astype(int)
    y_pred = (np.asarray(y_prob) >= np.array([thresholds[name] for name in classes])).astype(int)
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
        "thresholds": thresholds,
    }
