"""The report's comparison protocol: which claims it tests, and the conclusions the tests allow.

Per dataset and setting, for mAP and AUROC, two kinds of comparison, paired by seed:

- every method with partial labels against ``fedavg-masked`` (missing classes left out of the loss:
  the strongest simple reference); ``fedavg-full`` trains on every label, is the upper bound and is
  not tested;
- the three partial-label methods with the highest mean mAP, every pair among them ("which is the
  best" is then tested, not read off the table). Without ``fedavg-masked`` only these are made.

All of them, over every setting and both metrics, are one family: the paired t-tests are
Holm-adjusted over the whole family, and so, apart, are the equivalence tests (TOST within ±m). A
comparison is "better"/"worse" when its adjusted t-test p < α, "level within ±m" when its adjusted
TOST p < α, and otherwise "not resolved". The conclusions are generated from these verdicts only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from fedmlp.config import ClaimsConfig
from fedmlp.statistics import PairedDifference, by_method, holm_family, paired_difference

REFERENCE = "fedavg-masked"  # every partial-label method is compared with it
UPPER_BOUND = "fedavg-full"  # fully labelled: shown, never tested nor marked best among the partial-label methods
METRICS = ("mAP", "AUROC")
TOP = 3  # the methods with the highest mean mAP compared pairwise
RANK_METRIC = "mAP"
VALIDATION_RANK = "val_mAP"  # the final round's validation mAP: what the top methods are picked by, where every run has it
VERDICTS = ("better", "worse", "level", "not resolved")


@dataclass(frozen=True)
class Claim:
    """One member of the family: a paired comparison in one setting and its verdict."""

    dataset: str
    setting: str
    result: PairedDifference  # method − reference
    verdict: str  # one of VERDICTS

    @property
    def where(self) -> str:
        return f"{self.dataset} · {self.setting}"

    @property
    def pair(self) -> str:
        return f"{self.result.method} − {self.result.reference}"


@dataclass(frozen=True)
class Family:
    """Every comparison the report makes, with the settings they came from."""

    claims: list[Claim]
    config: ClaimsConfig
    per_setting: dict[tuple[str, str], int]  # comparisons per (dataset, setting), over both metrics
    without_reference: list[tuple[str, str]]  # settings without fedavg-masked: top-3 pairwise only
    ranked_on_test: list[tuple[str, str]] = field(default_factory=list)  # settings whose top methods were picked on test (no validation)

    def of(self, dataset: str, setting: str) -> list[Claim]:
        return [c for c in self.claims if (c.dataset, c.setting) == (dataset, setting)]


def partial_label_methods(block: pd.DataFrame) -> list[str]:
    return [m for m in dict.fromkeys(block["method"]) if m != UPPER_BOUND]


def top_methods(block: pd.DataFrame, k: int = TOP, metric: str = RANK_METRIC) -> list[str]:
    """The ``k`` partial-label methods with the highest mean ``metric``, best first."""
    rows = block[(block["metric"] == metric) & block["method"].isin(partial_label_methods(block))]
    means = rows.groupby("method", sort=False)["value"].mean().dropna()
    return list(means.sort_values(ascending=False, kind="stable").index[:k])


def pairs(block: pd.DataFrame, ranking: pd.DataFrame | None = None) -> list[tuple[str, str]]:
    """(method, reference) for each comparison in one setting: against fedavg-masked, then the top
    methods pairwise (the better-ranked first) unless that pair is already made. The top methods are
    picked on ``ranking`` (the validation mAP, same long form) when given, else on test mAP."""
    methods = partial_label_methods(block)
    against = [(m, REFERENCE) for m in methods if m != REFERENCE] if REFERENCE in methods else []
    made = {frozenset(p) for p in against}
    top = top_methods(block) if ranking is None else top_methods(ranking, metric=VALIDATION_RANK)
    return against + [p for p in combinations(top, 2) if frozenset(p) not in made]


def validation_ranking(ranking: pd.DataFrame | None, dataset: str, setting: str, methods: list[str]) -> pd.DataFrame | None:
    """The rows of ``ranking`` for one setting, if every run of its partial-label methods has a validation mAP."""
    if ranking is None or ranking.empty:
        return None
    rows = ranking[(ranking["dataset"] == dataset) & (ranking["setting"] == setting) & ranking["method"].isin(methods)]
    return rows if set(methods) <= set(rows["method"]) and rows["value"].notna().all() else None


def verdict(result: PairedDifference, alpha: float) -> str:
    """The verdict its Holm-adjusted p-values allow (NaN allows none)."""
    if result.p_holm < alpha:
        return "better" if result.mean > 0 else "worse"
    if result.p_tost_holm < alpha:
        return "level"
    return "not resolved"


def family(summary: pd.DataFrame, config: ClaimsConfig, ranking: pd.DataFrame | None = None) -> Family:
    """Every comparison over the (dataset, setting) blocks of ``summary`` (long form, as summary.csv);
    ``ranking``: each run's final validation mAP (metric ``val_mAP``, same long form), which picks the
    top methods where every method has one, so that which pairs are tested is not read on test."""
    margins = asdict(config.equivalence_margin)
    keyed: list[tuple[str, str, PairedDifference]] = []
    without: list[tuple[str, str]] = []
    on_test: list[tuple[str, str]] = []
    for (dataset, setting), block in summary.groupby(["dataset", "setting"], sort=False):
        if REFERENCE not in set(block["method"]):
            without.append((dataset, setting))
        rank = validation_ranking(ranking, dataset, setting, partial_label_methods(block))
        if rank is None:
            on_test.append((dataset, setting))
        chosen = pairs(block, rank)
        for metric in METRICS:
            values = by_method(block, metric)
            keyed += [(dataset, setting, paired_difference(values[m], values[r], m, r, metric, margins[metric]))
                      for m, r in chosen if m in values and r in values]
    adjusted = holm_family([r for _, _, r in keyed])
    claims = [Claim(d, s, r, verdict(r, config.alpha)) for (d, s, _), r in zip(keyed, adjusted)]
    return Family(claims, config, dict(Counter((c.dataset, c.setting) for c in claims)), without, on_test)


def signed(value: float) -> str:
    return f"{value:+.3f}"


def p_text(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3g}"


def interval(r: PairedDifference) -> str:
    return "n/a" if np.isnan(r.low) else f"[{signed(r.low)}, {signed(r.high)}]"


def verdict_text(claim: Claim) -> str:
    return f"level within ±{claim.result.margin:g}" if claim.verdict == "level" else claim.verdict


def sentence(claim: Claim) -> str:
    """One decisive claim, worded from its test only."""
    r = claim.result
    if claim.verdict == "level":
        return (f"{claim.where}, {r.metric}: **{r.method} level with {r.reference} within ±{r.margin:g}** "
                f"({signed(r.mean)} {interval(r)}, TOST p (Holm) = {p_text(r.p_tost_holm)})")
    return (f"{claim.where}, {r.metric}: **{r.method} {claim.verdict} than {r.reference}** "
            f"({signed(r.mean)} {interval(r)}, paired t p (Holm) = {p_text(r.p_holm)})")


def _span(fam: Family) -> str:
    """What the family spans: settings × comparisons × metrics."""
    settings = f"{len(fam.per_setting)} setting{'s' * (len(fam.per_setting) != 1)}"
    if any(n % len(METRICS) for n in fam.per_setting.values()):  # a metric missing for some pair
        counts = ", ".join(f"{s} {n}" for (_, s), n in fam.per_setting.items())
        return f"{settings} × their comparisons × {len(METRICS)} metrics, where defined: {counts}"
    per = {s: n // len(METRICS) for (_, s), n in fam.per_setting.items()}
    if len(set(per.values())) == 1:
        return f"{settings} × {next(iter(per.values()))} comparisons × {len(METRICS)} metrics"
    counts = ", ".join(f"{s} {n}" for s, n in per.items())
    return f"{settings} × {min(per.values())}–{max(per.values())} comparisons × {len(METRICS)} metrics; comparisons per setting: {counts}"


def _seeds(fam: Family) -> str:
    n = sorted({c.result.n for c in fam.claims})
    return f"n = {n[0]} seeds" if len(n) == 1 else f"n = {n[0]}–{n[-1]} seeds (per comparison, the seeds both methods ran)"


def family_text(fam: Family) -> str:
    """The family, its correction, margins and seeds, in one paragraph."""
    margins = ", ".join(f"±{m:g} {metric}" for metric, m in asdict(fam.config.equivalence_margin).items())
    alpha = fam.config.alpha
    text = (f"The family: **{len(fam.claims)} comparisons** ({_span(fam)}), paired by seed, {_seeds(fam)}. Per setting: "
            f"each method with partial labels against {REFERENCE}, and the {TOP} partial-label methods with the highest "
            f"mean final-round validation {RANK_METRIC} pairwise ({UPPER_BOUND}, the fully labelled upper bound, is not tested). Correction: Holm over "
            f"the whole family, family-wise α = {alpha:g}, once for the paired t-tests (better / worse) and once for the "
            f"equivalence tests (TOST, level: two one-sided paired t-tests against the margin {margins}): the chance of "
            f"any false better / worse is at most α, of any false level at most α, of either at most {2 * alpha:g}. A comparison neither test decides is "
            "\"not resolved\": no evidence either way, not evidence of equality.")
    if fam.without_reference:
        where = ", ".join(f"{d} · {s}" for d, s in fam.without_reference)
        text += f" {REFERENCE} is not in the run ({where}): there the comparisons are the top {TOP} pairwise only."
    if fam.ranked_on_test:
        where = ", ".join(f"{d} · {s}" for d, s in fam.ranked_on_test)
        text += (f" Without a validation mAP for every method ({where}), the top {TOP} were picked on test mAP: "
                 "that choice of pairs is not covered by the correction.")
    return text


def _against(methods: list[str], reference: str) -> str:
    return f"{methods[0]} − {reference}" if len(methods) == 1 else f"{{{', '.join(methods)}}} − {reference}"


def conclusions_markdown(fam: Family) -> list[str]:
    """The report's "Conclusions" section: one line per decisive comparison, the rest counted and listed."""
    out = ["## Conclusions", "", "Generated from the tests below, not written by hand.", ""]
    if not fam.claims:
        return out + [f"No comparisons: no setting has two methods with partial labels ({UPPER_BOUND} is not tested).", ""]
    out += [family_text(fam), ""]
    decisive = [c for c in fam.claims if c.verdict != "not resolved"]
    out += [f"- {sentence(c)}" for c in decisive] or [f"None of the {len(fam.claims)} comparisons is decisive."]
    open_ = [c for c in fam.claims if c.verdict == "not resolved"]
    if open_:
        groups: dict[str, dict[str, list[str]]] = {}
        for c in open_:
            groups.setdefault(f"{c.where}, {c.result.metric}", {}).setdefault(c.result.reference, []).append(c.result.method)
        listed = "; ".join(f"{where}: {', '.join(_against(m, r) for r, m in by_reference.items())}"
                           for where, by_reference in groups.items())
        out += ["", f"Not resolved: {len(open_)} of {len(fam.claims)} ({listed})."]
    return out + [""]
