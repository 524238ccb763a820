"""Calibration on validation: a small grid per method over settings copied from other regimes.

The config's ``tuning`` section lists, per method, values for some of its settings (``rscfed:
{dist_scale: [0, 100, 10000]}``; a nested setting by its dotted name, ``tau0.max``). Each point of a
method's grid (the product of its lists) is an ordinary run whose method is named after the point,
``rscfed@dist_scale=100``, so that it is cached like any run and adding a value reruns only that
point's runs. The report (:func:`choose`) picks, per dataset, setting and method, the point with the
highest mean final-round validation mAP over seeds, never looking at the test set, shows the chosen
point's test scores under the method's own name, and writes every point to ``tuning.csv``.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

from fedmlp.errors import FedmlpError

SEPARATOR = "@"  # between a method and its grid point in a run's method name
POINT_PATTERN = r"[a-z0-9_.=,+-]+"  # what may follow SEPARATOR (the workflow's method wildcard)


@dataclass(frozen=True)
class GridPoint:
    method: str
    overrides: tuple[tuple[str, Any], ...]  # (dotted key, value) in the config's key order

    @property
    def name(self) -> str:
        return f"{self.method}{SEPARATOR}" + ",".join(f"{key}={_format(value)}" for key, value in self.overrides)

    @property
    def settings_text(self) -> str:
        return ",".join(f"{key}={_format(value)}" for key, value in self.overrides)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def base_method(name: str) -> str:
    """The registered method of a run's method name (``rscfed@dist_scale=0`` → ``rscfed``)."""
    return name.split(SEPARATOR, 1)[0]


def points(config: dict[str, Any]) -> list[GridPoint]:
    """Every grid point of the methods the config runs, method by method in the config's order."""
    grids = config.get("tuning") or {}
    out = []
    for method in config["methods"]:
        grid = grids.get(method) or {}
        if not grid:
            continue
        keys = list(grid)
        for values in itertools.product(*(grid[key] for key in keys)):
            out.append(GridPoint(method, tuple(zip(keys, values))))
    return out


def run_methods(config: dict[str, Any]) -> list[str]:
    """The method names of the config's runs: a tuned method's grid points instead of the method."""
    tuned = {point.method for point in points(config)}
    names = []
    for method in config["methods"]:
        names += [p.name for p in points(config) if p.method == method] if method in tuned else [method]
    return names


def apply(settings: dict[str, Any], overrides: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """``settings`` (a method's config section) with a grid point's values in place of its own."""
    out = copy.deepcopy(settings)
    for key, value in overrides:
        *parents, leaf = key.split(".")
        target = out
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return out


def check(config: dict[str, Any], section_of: dict[str, str | None], fixed_keys: dict[str, tuple[str, ...]]) -> None:
    """Refuse, naming the key, a grid for a method the config does not run or that has no settings,
    a key its section lacks, an empty list, or a key ``fixed_keys`` says its grid may not vary (the
    FedMLP warm-up's, which every FedMLP run shares). Values are checked by the schema (per key)."""
    for method, grid in (config.get("tuning") or {}).items():
        where = f"tuning.{method}"
        if method not in config["methods"]:
            raise FedmlpError(f"config key '{where}': {method} is not among 'methods' ({', '.join(config['methods'])})")
        section = section_of.get(method)
        if section is None:
            raise FedmlpError(f"config key '{where}': {method} has no settings to tune")
        for key, values in grid.items():
            target: Any = config[section]
            for part in key.split("."):
                if not isinstance(target, dict) or part not in target:
                    raise FedmlpError(f"config key '{where}.{key}': {section} has no setting {key}")
                target = target[part]
            if isinstance(target, dict):
                raise FedmlpError(f"config key '{where}.{key}': a group of settings; name one of it ({key}.{next(iter(target))}, ...)")
            if not values:
                raise FedmlpError(f"config key '{where}.{key}': expected at least one value")
            if key in fixed_keys.get(method, ()):
                raise FedmlpError(f"config key '{where}.{key}': {method}'s warm-up is shared by every run, so {key} cannot be tuned per run")


def final_val_map(run: dict[str, Any]) -> float:
    """A run's validation mAP at its final round (the round its test scores are from)."""
    values = run["rounds"].get("val_mAP") or []
    value = values[-1] if values else None
    return float("nan") if value is None else float(value)


def choose(runs: list[dict[str, Any]]):
    """Split the runs into those the report shows and the tuning table.

    Per dataset, setting and tuned method, the point whose mean final-round validation mAP over
    seeds is highest is chosen (ties: the first in grid order); its runs are returned under the
    method's own name, the other points' runs are left out. The table has one row per point and seed:
    dataset, setting, method, point, seed, settings, val_mAP, chosen. A tuned method without a
    validation split cannot be chosen: refused."""
    import pandas as pd

    rows = []
    for run in runs:
        name = run["run"]["method"]
        if SEPARATOR in name:
            rows.append({"dataset": run["run"]["dataset"], "setting": run["run"]["setting"], "method": base_method(name),
                         "point": name, "seed": run["run"]["seed"], "settings": name.split(SEPARATOR, 1)[1],
                         "val_mAP": final_val_map(run)})
    columns = ["dataset", "setting", "method", "point", "seed", "settings", "val_mAP", "chosen"]
    if not rows:
        return runs, pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    means = table.groupby(["dataset", "setting", "method", "point"], sort=False)["val_mAP"].mean().reset_index()
    if means["val_mAP"].isna().any():
        bad = means[means["val_mAP"].isna()].iloc[0]
        raise FedmlpError(f"tuning: {bad['point']} ({bad['dataset']} · {bad['setting']}) has no validation mAP at its final round: "
                          "tuning needs a validation split (split.val_fraction) scored at the last round")
    best = means.loc[means.groupby(["dataset", "setting", "method"], sort=False)["val_mAP"].idxmax()]
    chosen_keys = set(zip(best["dataset"], best["setting"], best["point"]))
    table["chosen"] = [(d, s, p) in chosen_keys for d, s, p in zip(table["dataset"], table["setting"], table["point"])]
    shown = []
    for run in runs:
        name = run["run"]["method"]
        if SEPARATOR not in name:
            shown.append(run)
        elif (run["run"]["dataset"], run["run"]["setting"], name) in chosen_keys:
            shown.append({**run, "run": {**run["run"], "method": base_method(name), "point": name}})
    return shown, table[columns]


def budget(table) -> dict[tuple[str, str, str], int]:
    """Grid points per dataset, setting and method (untuned methods: one)."""
    return {key: int(group["point"].nunique()) for key, group in table.groupby(["dataset", "setting", "method"], sort=False)}
