"""Metrics agree with scikit-learn and survive classes missing from the test set."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, hamming_loss, precision_score, recall_score, roc_auc_score

from fedmlp.metrics import evaluate, ranking_metrics


@pytest.fixture()
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    y = (rng.random((200, 4)) < 0.3).astype(int)
    p = np.clip(0.35 * y + rng.random((200, 4)) * 0.7, 0, 1)
    return y, p


def test_macro_metrics_match_sklearn(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = arrays
    result = evaluate(y, p, ["a", "b", "c", "d"])
    overall, pred = result["overall"], (p >= 0.5).astype(int)
    assert overall["mAP"] == pytest.approx(average_precision_score(y, p, average="macro"))
    assert overall["AUROC"] == pytest.approx(roc_auc_score(y, p, average="macro"))
    assert overall["F1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert overall["precision"] == pytest.approx(precision_score(y, pred, average="macro", zero_division=0))
    assert overall["recall"] == pytest.approx(recall_score(y, pred, average="macro", zero_division=0))
    assert overall["hamming_loss"] == pytest.approx(hamming_loss(y, pred))
    tpr = (pred & y).sum(0) / y.sum(0)
    tnr = ((1 - pred) & (1 - y)).sum(0) / (1 - y).sum(0)
    assert overall["BACC"] == pytest.approx(np.mean((tpr + tnr) / 2))
    assert ranking_metrics(y, p) == pytest.approx({"mAP": overall["mAP"], "AUROC": overall["AUROC"]})


def test_hand_checked_example() -> None:
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.4, 0.6], [0.3, 0.7], [0.1, 0.8]])
    result = evaluate(y, p, ["x", "y"])
    # class x: ranking 0.9(+) 0.4(-) 0.3(+) 0.1(-): AP = (1/1 + 2/3)/2, AUROC = 3/4
    assert result["per_class"]["x"]["AP"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["per_class"]["x"]["AUROC"] == pytest.approx(0.75)
    # class y at 0.5: predictions 0,1,1,1 vs 0,1,1,0 → precision 2/3, recall 1, F1 0.8
    assert result["per_class"]["y"]["precision"] == pytest.approx(2 / 3)
    assert result["per_class"]["y"]["F1"] == pytest.approx(0.8)
    assert result["overall"]["hamming_loss"] == pytest.approx(2 / 8)


def test_class_absent_from_test_set_is_reported_not_nan(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = arrays
    y = y.copy()
    y[:, 2] = 0
    result = evaluate(y, p, ["a", "b", "c", "d"])
    assert result["undefined_classes"] == ["c"]
    assert result["per_class"]["c"]["AUROC"] is None
    assert all(np.isfinite(v) for v in result["overall"].values())
    keep = [0, 1, 3]
    assert result["overall"]["mAP"] == pytest.approx(average_precision_score(y[:, keep], p[:, keep], average="macro"))
