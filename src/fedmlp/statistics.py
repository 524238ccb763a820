"""Paired comparisons between methods over seeds.

Runs with the same seed share the round-0 model, the data order and every other random stream that
does not depend on the method, so the comparison of two methods is paired by seed: the differences
d_s = metric(method, s) − metric(reference, s) are what vary between seeds, and their mean, a t
interval and a paired t-test say whether a difference is beyond the seed noise; the Wilcoxon
signed-rank test is reported beside it (no normality assumed; its exact p-value cannot go below
2 / 2^n, 0.0625 with 5 seeds). With several methods compared to one reference, the t-test's p-values
are Holm-adjusted (family-wise error over the methods).

"Level" needs its own test: a large p of the t-test is no evidence of equality. :func:`tost` tests
equivalence within a stated margin ±m (two one-sided paired t-tests), and :func:`holm_family`
adjusts both kinds of p-value over every comparison a report makes (fedmlp.claims builds that family).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class PairedDifference:
    method: str
    reference: str
    metric: str
    n: int  # seeds present for both
    mean: float  # mean of method − reference
    low: float  # 95 % t interval of the mean difference
    high: float
    p: float  # two-sided paired t-test
    p_holm: float = float("nan")
    p_wilcoxon: float = float("nan")  # two-sided Wilcoxon signed-rank test (exact for few seeds)
    margin: float = float("nan")  # the equivalence margin m of p_tost
    p_tost: float = float("nan")  # equivalence within ±margin (two one-sided paired t-tests)
    p_tost_holm: float = float("nan")


def paired_difference(values: pd.Series, reference: pd.Series, method: str, reference_name: str, metric: str,
                      margin: float = float("nan")) -> PairedDifference:
    """``values`` and ``reference`` indexed by seed; only seeds in both count; with a ``margin`` also
    the equivalence test."""
    seeds = values.index.intersection(reference.index)
    d = (values[seeds] - reference[seeds]).to_numpy(dtype=float)
    n = len(d)
    if n < 2:
        mean = float(d.mean()) if n else float("nan")
        return PairedDifference(method, reference_name, metric, n, mean, float("nan"), float("nan"), float("nan"), margin=margin)
    mean, sem = float(d.mean()), float(d.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.975, n - 1) * sem)
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if sem > 0 else (0.0 if mean != 0 else 1.0)
    return PairedDifference(method, reference_name, metric, n, mean, mean - half, mean + half, p, p_wilcoxon=_wilcoxon(d),
                            margin=margin, p_tost=tost(d, margin))


def tost(d: np.ndarray, margin: float) -> float:
    """p-value of equivalence, −margin < mean(d) < +margin: the larger of two one-sided paired t-tests
    (H0: mean ≤ −margin, H0: mean ≥ +margin). NaN with fewer than 2 differences or no margin."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2 or not margin > 0:
        return float("nan")
    if not d.std(ddof=1) > 0:  # no spread: the mean is the verdict
        return 0.0 if abs(d.mean()) < margin else 1.0
    above = stats.ttest_1samp(d + margin, 0.0, alternative="greater").pvalue
    below = stats.ttest_1samp(d - margin, 0.0, alternative="less").pvalue
    return float(max(above, below))


def _wilcoxon(d: np.ndarray) -> float:
    """Two-sided signed-rank p-value of the differences; 1 when they are all zero (no evidence)."""
    if not np.any(d):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="wilcox").pvalue)


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (NaN stays NaN and does not count)."""
    indexed = [(p, i) for i, p in enumerate(p_values) if not np.isnan(p)]
    adjusted = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(indexed)):
        running = max(running, min(1.0, (len(indexed) - rank) * p))
        adjusted[i] = running
    return adjusted


def holm_family(results: list[PairedDifference]) -> list[PairedDifference]:
    """Holm over the whole family: the paired t-tests' p-values together (``p_holm``) and, apart, the
    equivalence tests' (``p_tost_holm``)."""
    p_holm, p_tost_holm = holm([r.p for r in results]), holm([r.p_tost for r in results])
    return [replace(r, p_holm=a, p_tost_holm=b) for r, a, b in zip(results, p_holm, p_tost_holm)]


def by_method(block: pd.DataFrame, metric: str) -> dict[str, pd.Series]:
    """``metric``'s values per method of ``block`` (long form: method, seed, metric, value), indexed by
    seed; missing values (NaN: e.g. no validation set) drop their seed from any pairing."""
    rows = block[(block["metric"] == metric) & block["value"].notna()]
    return {m: g.set_index("seed")["value"] for m, g in rows.groupby("method", sort=False)}


def compare_to(block: pd.DataFrame, reference: str, metric: str) -> list[PairedDifference]:
    """Every other method of ``block`` (long form: method, seed, metric, value) against ``reference``,
    Holm-adjusted over those methods."""
    series = by_method(block, metric)
    if reference not in series:
        return []
    results = [paired_difference(values, series[reference], method, reference, metric)
               for method, values in series.items() if method != reference]
    adjusted = holm([r.p for r in results])
    return [PairedDifference(**{**r.__dict__, "p_holm": a}) for r, a in zip(results, adjusted)]
