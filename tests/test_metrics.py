"""Metrics agree with scikit-learn and survive classes missing from the test set; thresholds and the
best round are chosen on validation scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, hamming_loss, precision_score, recall_score, roc_auc_score

from fedmlp.metrics import best_val_round, evaluate, f1_thresholds, ranking_metrics, undefined_warnings


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


def test_each_undefined_class_is_named_with_why(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = arrays
    y = y.copy()
    y[:, 2], y[:, 3] = 0, 1
    messages = undefined_warnings(evaluate(y, p, ["a", "b", "c", "d"]))
    assert [m.split(" in the test set")[0] for m in messages] == ["class c has no positive", "class d has no negative"]
    everything = evaluate(np.zeros_like(y), p, ["a", "b", "c", "d"])
    assert np.isnan(everything["overall"]["mAP"])
    assert undefined_warnings(everything)[-1].startswith("no class has both label values in the test set")


def test_thresholds_maximise_validation_f1_per_class() -> None:
    # class a: positives 0.3, 0.35, 0.4; negatives 0.1, 0.2, 0.38. F1 of p >= t: 0.1 → 2/3, 0.2 → 3/4,
    # 0.3 → 6/7 (the best), 0.35 → 2/3, 0.38 → 2/5, 0.4 → 1/2; at 0.5 nothing is predicted (F1 0).
    # class b: no positives, nothing to choose → 0.5
    y = np.array([[1, 0], [1, 0], [1, 0], [0, 0], [0, 0], [0, 0]])
    p = np.array([[0.3, 0.9], [0.35, 0.1], [0.4, 0.2], [0.1, 0.3], [0.2, 0.6], [0.38, 0.4]])
    thresholds = f1_thresholds(y, p, ["a", "b"])
    assert thresholds == {"a": 0.3, "b": 0.5}
    chosen, fixed = evaluate(y, p, ["a", "b"], thresholds), evaluate(y, p, ["a", "b"])
    assert chosen["per_class"]["a"]["F1"] == pytest.approx(6 / 7) and fixed["per_class"]["a"]["F1"] == 0
    assert chosen["thresholds"] == thresholds and fixed["thresholds"] == {"a": 0.5, "b": 0.5}
    assert chosen["per_class"]["b"] == fixed["per_class"]["b"]  # 0.5 either way


def test_best_validation_round_and_its_test_scores() -> None:
    nan = float("nan")
    val = [nan, 0.52, nan, 0.61, nan, 0.61]  # rounds 4 and 6 tie: the earlier one
    rounds = [{"round": r, "test_mAP": 0.4 + r / 100, "test_AUROC": 0.7 + r / 100, "val_mAP": v, "val_AUROC": v}
              for r, v in enumerate(val, start=1)]
    assert best_val_round(rounds) == {"round": 4, "val_mAP": 0.61, "test_mAP": 0.44, "test_AUROC": 0.74}
    assert best_val_round([{**r, "val_mAP": nan} for r in rounds]) is None  # no validation set
