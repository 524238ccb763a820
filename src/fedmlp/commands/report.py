"""``fedmlp report``: summary.csv, report.md and the figures from the runs' metrics."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmlp.commands.common import read_json


def cmd_report(args: argparse.Namespace) -> None:
    import pandas as pd

    from fedmlp.report import write_report

    diagnostics = pd.concat([pd.read_csv(p) for p in args.diagnostics]) if args.diagnostics else None
    write_report([read_json(p) for p in args.metrics], args.summary, args.report, args.figure, diagnostics)


def add_commands(add) -> None:
    p = add("report", cmd_report, "summary.csv, report.md and the per-round plots from metrics (and diagnostics) files")
    p.add_argument("metrics", type=Path, nargs="+")
    p.add_argument("--diagnostics", type=Path, nargs="*", default=[],
                   help="pseudo-label diagnostics CSVs; their plot goes to pseudolabels.png beside --figure")
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--figure", type=Path, required=True)
