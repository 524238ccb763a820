"""``fedmlp report``: summary.csv, report.md, table.tex and the figures from the runs' metrics."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from fedmlp.commands.common import declare_paths, read_json
from fedmlp.errors import FedmlpError
from fedmlp.inputs import require

RUN_FIELDS = {"dataset": str, "setting": str, "method": str, "seed": int}
BEST_VAL_FIELDS = ("round", "val_mAP", "test_mAP", "test_AUROC")  # the round of the best validation mAP (optional)


def _number(value: Any, allow_missing: bool = True) -> bool:
    if value is None:
        return allow_missing
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (allow_missing or math.isfinite(value))


def _gate_row(row: Any) -> bool:
    """One row of metrics.json's ``gates`` (:data:`fedmlp.federated.GATE_FIELDS`)."""
    return (isinstance(row, dict) and _number(row.get("round"), False) and _number(row.get("unit"), False)
            and row.get("side") in ("client", "server") and isinstance(row.get("gate"), str)
            and _number(row.get("rate"), False) and 0 <= row["rate"] <= 1)


def check_metrics(data: Any, path: Path) -> dict[str, Any]:
    """A metrics file as ``fedmlp evaluate`` writes it (NaN or null where a metric is undefined)."""
    from fedmlp.metrics import METRICS

    require(isinstance(data, dict) and all(isinstance(data.get(k), dict) for k in ("run", "overall", "per_class", "rounds")), path,
            "not a metrics file (expected run, overall, per_class and rounds, as 'fedmlp evaluate' writes them)")
    run = data["run"]
    for field, kind in RUN_FIELDS.items():
        require(isinstance(run.get(field), kind) and not isinstance(run.get(field), bool), path,
                f"run.{field}: expected a {kind.__name__} (was it written by 'fedmlp evaluate --run'?)")
    require(all(_number(data["overall"].get(m, "absent")) for m in METRICS), path, f"overall: expected a number for each of {', '.join(METRICS)}")
    per_class = data["per_class"]
    require(bool(per_class) and all(isinstance(v, dict) and "AUROC" in v and _number(v["AUROC"]) for v in per_class.values()), path,
            "per_class: expected an AUROC (number or null) per class")
    require(isinstance(data.get("undefined_classes", []), list), path, "undefined_classes: expected a list")
    warnings = data.get("warnings", [])
    require(isinstance(warnings, list) and all(isinstance(w, str) for w in warnings), path, "warnings: expected a list of strings")
    gates = data.get("gates", [])
    require(isinstance(gates, list) and all(_gate_row(g) for g in gates), path,
            "gates: expected a list of {round, side (client or server), unit, gate, rate in [0, 1]}")
    rounds = data["rounds"]
    lists = [rounds.get(k) for k in ("round", "test_mAP", "test_AUROC")]
    require(all(isinstance(v, list) and v and all(_number(x) for x in v) for v in lists) and len({len(v) for v in lists}) == 1, path,
            "rounds: expected lists round, test_mAP and test_AUROC of one length")
    require(all(_number(x, allow_missing=False) for x in rounds["round"]), path, "rounds.round: expected round numbers")
    compute = data.get("compute", {"cost": 1.0})
    require(isinstance(compute, dict) and _number(compute.get("cost"), allow_missing=False) and compute["cost"] > 0, path,
            "compute: expected an object with a positive number 'cost' (the run's counted training cost)")
    best_val = data.get("best_val")
    require(best_val is None or (isinstance(best_val, dict) and all(_number(best_val.get(k, "absent")) for k in BEST_VAL_FIELDS)), path,
            f"best_val: expected null or a number (or null) for each of {', '.join(BEST_VAL_FIELDS)}")
    return data


def check_runs(runs: list[dict[str, Any]], paths: list[Path]) -> None:
    """Runs shown side by side: one class list per dataset and setting, and no run twice."""
    seen: dict[tuple, Path] = {}
    classes: dict[tuple, list[str]] = {}
    for run, path in zip(runs, paths):
        key = tuple(run["run"][f] for f in RUN_FIELDS)
        if key in seen:
            raise FedmlpError(f"{path}: the same run ({', '.join(map(str, key))}) as {seen[key]}")
        seen[key] = path
        group = key[:2]
        names = list(run["per_class"])
        if classes.setdefault(group, names) != names:
            raise FedmlpError(f"{path}: classes {names} differ from the other runs of {group[0]} · {group[1]} ({classes[group]})")


def cmd_report(args: argparse.Namespace) -> None:
    import pandas as pd

    from fedmlp.config import ClaimsConfig, from_json
    from fedmlp.diagnostics import COUNTS
    from fedmlp.inputs import read_csv
    from fedmlp.report import write_report

    claims = from_json(ClaimsConfig, args.claims, "report") if args.claims is not None else ClaimsConfig()
    runs = [check_metrics(read_json(p), p) for p in args.metrics]
    check_runs(runs, args.metrics)
    columns = [*RUN_FIELDS, "round", "client", "class", *COUNTS]
    tables = [read_csv(p, columns, numeric=["seed", "round", "client", *COUNTS], text=["dataset", "setting", "method", "class"])
              for p in args.diagnostics]
    for path, table in zip(args.diagnostics, tables):
        negative = (table[COUNTS] < 0).any(axis=1)
        if negative.any():
            raise FedmlpError(f"{path}:{int(negative.to_numpy().argmax()) + 2}: a negative count")
    diagnostics = pd.concat(tables) if tables else None
    write_report(runs, args.summary, args.report, args.figure, diagnostics, args.dvc_metrics, args.plot_data, args.latex, claims,
                 args.tuning, args.html)


def add_commands(add) -> None:
    p = add("report", cmd_report, "summary.csv, report.md, table.tex and the plots from metrics (and diagnostics) files; DVC's metrics and plot data")
    p.add_argument("metrics", type=Path, nargs="+")
    p.add_argument("--diagnostics", type=Path, nargs="*", default=[],
                   help="pseudo-label diagnostics CSVs; their plot goes to pseudolabels.png beside --figure")
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--html", type=Path, default=None,
                   help="also write report.md as one self-contained HTML page (tables as tables, the figures embedded)")
    p.add_argument("--figure", type=Path, required=True,
                   help="the per-round test mAP plot; with several settings map_by_annotated.png is written beside it")
    p.add_argument("--latex", type=Path, default=None,
                   help="also write the tables per setting family (methods × annotated classes per client) as LaTeX (booktabs)")
    p.add_argument("--tuning", type=Path, default=None,
                   help="also write every tuning grid point's validation mAP per seed and which point was chosen (CSV); "
                        "runs named method@settings are grid points")
    p.add_argument("--dvc-metrics", type=Path, default=None,
                   help="also write mean and SD over seeds of mAP and AUROC per setting and method (JSON, for dvc metrics show)")
    p.add_argument("--plot-data", type=Path, default=None,
                   help="also write the per-round test mAP and AUROC per setting and method, mean over seeds, as CSV (for dvc plots show)")
    p.add_argument("--claims", default=None, metavar="JSON",
                   help='the tests\' settings, as the config\'s report section, e.g. \'{"alpha": 0.05, "equivalence_margin": {"mAP": 0.02, '
                        '"AUROC": 0.02}}\' (those are the defaults)')
    declare_paths(p, ["metrics", "--diagnostics"],
                  ["--summary", "--report", "--figure", "--latex", "--tuning", "--dvc-metrics", "--plot-data", "--html"])
