"""Paired differences, intervals, the equivalence test and Holm's adjustment against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fedmlp.statistics import compare_to, holm, holm_family, paired_difference, tost


def test_paired_difference_matches_a_paired_t_test() -> None:
    a = pd.Series([0.70, 0.72, 0.69, 0.75], index=[0, 1, 2, 3])
    b = pd.Series([0.65, 0.66, 0.66, 0.70, 0.9], index=[0, 1, 2, 3, 4])  # seed 4 has no pair: left out
    result = paired_difference(a, b, "x", "y", "mAP")
    d = [0.05, 0.06, 0.03, 0.05]
    assert result.n == 4 and result.mean == pytest.approx(sum(d) / 4)
    assert result.p == pytest.approx(stats.ttest_rel(a.values, b.values[:4]).pvalue)
    half = stats.t.ppf(0.975, 3) * pd.Series(d).std() / 2
    assert (result.low, result.high) == pytest.approx((result.mean - half, result.mean + half))


def test_too_few_seeds_give_no_interval() -> None:
    result = paired_difference(pd.Series([0.5], index=[0]), pd.Series([0.4], index=[0]), "x", "y", "mAP")
    assert result.n == 1 and math.isnan(result.p) and math.isnan(result.low)


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, float("nan"), 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)


def test_compare_to_a_reference_over_methods() -> None:
    rows = [{"method": m, "seed": s, "metric": "mAP", "value": v}
            for m, values in {"fedmlp": [0.6, 0.62, 0.61], "a": [0.5, 0.51, 0.53], "b": [0.6, 0.63, 0.6]}.items()
            for s, v in enumerate(values)]
    results = {r.method: r for r in compare_to(pd.DataFrame(rows), "fedmlp", "mAP")}
    assert set(results) == {"a", "b"}
    assert results["a"].mean == pytest.approx(-0.0966667, rel=1e-4) and results["a"].high < 0
    assert results["b"].low < 0 < results["b"].high
    assert results["a"].p_holm >= results["a"].p


def test_missing_values_leave_the_pairing_instead_of_faking_a_difference() -> None:
    nan = float("nan")
    rows = [{"method": m, "seed": s, "metric": "val_mAP", "value": v}
            for m, values in {"fedmlp": [0.6, 0.62, 0.61], "no-val": [nan, nan, nan], "one-gap": [0.5, nan, 0.52]}.items()
            for s, v in enumerate(values)]
    results = {r.method: r for r in compare_to(pd.DataFrame(rows), "fedmlp", "val_mAP")}
    assert set(results) == {"one-gap"}  # no value at all: not compared (a NaN difference once read as p = 0)
    assert results["one-gap"].n == 2 and results["one-gap"].mean == pytest.approx(-0.095)


def test_wilcoxon_beside_the_t_test() -> None:
    a = pd.Series([0.70, 0.72, 0.69, 0.75, 0.71])
    b = pd.Series([0.65, 0.73, 0.66, 0.70, 0.70])
    result = paired_difference(a, b, "x", "y", "mAP")
    assert result.p_wilcoxon == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert paired_difference(a, a, "x", "y", "mAP").p_wilcoxon == 1.0  # no difference at all: no evidence


def test_tost_is_small_tightly_inside_the_margin_and_large_for_a_shifted_mean() -> None:
    inside = np.array([0.002, -0.001, 0.0025, 0.0, 0.0015])
    assert tost(inside, 0.02) < 0.001
    assert tost(inside + 0.03, 0.02) > 0.5  # the whole interval beyond +m: not level
    assert tost(inside, 0.001) > 0.05  # the same differences with a margin below their spread: not shown level
    wide = np.array([0.06, -0.05, 0.04, -0.07, 0.01])  # mean near 0 but spread: no evidence of equivalence
    assert tost(wide, 0.02) > 0.05


def test_tost_is_the_larger_of_two_one_sided_t_tests() -> None:
    d = np.array([0.01, -0.004, 0.012, 0.003, 0.006])
    above = stats.ttest_1samp(d + 0.02, 0.0, alternative="greater").pvalue
    below = stats.ttest_1samp(d - 0.02, 0.0, alternative="less").pvalue
    assert tost(d, 0.02) == pytest.approx(max(above, below))
    assert tost(-d, 0.02) == pytest.approx(tost(d, 0.02))  # symmetric in the sign of the difference


def test_tost_without_a_margin_or_pairs_is_nan_and_without_spread_is_the_mean() -> None:
    assert math.isnan(tost(np.array([0.01]), 0.02)) and math.isnan(tost(np.array([0.01, 0.02]), float("nan")))
    assert tost(np.full(5, 0.01), 0.02) == 0.0 and tost(np.full(5, 0.03), 0.02) == 1.0
    result = paired_difference(pd.Series([0.5], index=[0]), pd.Series([0.4], index=[0]), "x", "y", "mAP", margin=0.02)
    assert math.isnan(result.p_tost) and result.margin == 0.02


def test_holm_over_the_family_is_holm_of_the_concatenated_p_values() -> None:
    """Comparisons from several settings and metrics are adjusted together, not per setting; both
    kinds of p-value separately; a NaN (too few seeds) neither counts nor changes."""
    rng = np.random.default_rng(3)
    results = []
    for shift in (0.0, 0.01, 0.03, 0.005, -0.02):  # as if from different settings and metrics
        a, b = pd.Series(rng.normal(0.6 + shift, 0.01, 5)), pd.Series(rng.normal(0.6, 0.01, 5))
        results.append(paired_difference(a, b, "x", "y", "mAP", margin=0.02))
    results.append(paired_difference(pd.Series([0.5]), pd.Series([0.4]), "x", "y", "AUROC", margin=0.02))
    adjusted = holm_family(results)
    p, p_tost = [r.p for r in results], [r.p_tost for r in results]
    assert [r.p_holm for r in adjusted] == pytest.approx(holm(p), nan_ok=True)
    assert [r.p_tost_holm for r in adjusted] == pytest.approx(holm(p_tost), nan_ok=True)
    assert [r.p_holm for r in adjusted[:3]] != pytest.approx(holm(p[:3]))  # per-setting Holm would differ
    assert math.isnan(adjusted[-1].p_holm) and math.isnan(adjusted[-1].p_tost_holm)
    assert all(r.p_holm >= r.p and r.p_tost_holm >= r.p_tost for r in adjusted[:-1])
