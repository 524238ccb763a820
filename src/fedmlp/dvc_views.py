"""Readable DVC views: an HTML page of ``dvc plots show`` that works offline, and the metrics as one
row per setting and method (``dvc metrics show`` flattens them into one ~90-column row).

dvc-render's default page loads Vega, Vega-Lite and Vega-Embed from a CDN, so on an offline machine
it shows nothing. ``dvc plots show --html-template`` takes a page of our own: ours inlines the three
libraries (vendored in ``fedmlp/vega/``, versions in SOURCES.md there) and has no ``{scripts}``
placeholder, which is where DVC would add the CDN tags. docs/reports.md, "DVC views".
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmlp.errors import FedmlpError, one_line
from fedmlp.versioning import last_line, run_dvc

VEGA = Path(__file__).with_name("vega")
SCRIPTS = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")  # vega-lite and vega-embed need vega first
METRICS_FILE = "results/metrics.json"
PAGE_HEAD = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>fedmlp: DVC plots</title>
"""
PAGE_TAIL = """
    <style>
        table { border-spacing: 15px; }
        img { max-width: 100%; height: auto; }  /* the figures are saved at print resolution */
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_template() -> str:
    """dvc-render's page with the three libraries inline instead of its ``{scripts}`` (CDN tags)."""
    scripts = []
    for name in SCRIPTS:
        code = (VEGA / name).read_text(encoding="utf-8")
        if "</script" in code.lower() or "{plot_divs}" in code or "{refresh_tag}" in code:
            raise FedmlpError(f"{VEGA / name}: cannot be inlined (it contains '</script' or a dvc-render placeholder)")
        scripts.append(f"    <script>\n{code}\n    </script>\n")
    return PAGE_HEAD + "".join(scripts) + PAGE_TAIL


def show_plots(root: Path, out: Path) -> Path:
    """``dvc plots show`` of the workspace into ``out`` with the offline page; returns its index.html."""
    with tempfile.TemporaryDirectory(prefix="fedmlp-plots-") as tmp:
        template = Path(tmp) / "template.html"
        template.write_text(offline_template(), encoding="utf-8")
        result = run_dvc(root, "plots", "show", "--html-template", str(template), "-o", str(out.resolve()))
    if result.returncode != 0:
        raise FedmlpError(f"dvc plots show: {last_line(result)}")
    return out.resolve() / "index.html"


@dataclass(frozen=True)
class Row:
    """One method in one setting: final-round mAP and AUROC, mean and SD over seeds (None: undefined)."""

    setting: str
    method: str
    map_mean: float | None
    map_sd: float | None
    auroc_mean: float | None
    auroc_sd: float | None
    n_seeds: int | None


def rows(metrics: dict[str, Any]) -> list[Row]:
    """metrics.json's {setting: {method: {...}}} as rows, each setting's best mAP first."""
    found = []
    for setting, methods in metrics.items():
        if not isinstance(methods, dict):
            continue
        entries = [Row(setting, method, e.get("mAP_mean"), e.get("mAP_sd"), e.get("AUROC_mean"), e.get("AUROC_sd"), e.get("n_seeds"))
                   for method, e in methods.items() if isinstance(e, dict)]
        found += sorted(entries, key=lambda r: -(r.map_mean if r.map_mean is not None else -1.0))
    return found


def _mean_sd(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f}"


def table(found: list[Row]) -> str:
    """A plain-text table, one row per setting and method (about 70 columns)."""
    header = ("setting", "method", "mAP mean ± SD", "AUROC mean ± SD", "seeds")
    cells = [header] + [(r.setting, r.method, _mean_sd(r.map_mean, r.map_sd), _mean_sd(r.auroc_mean, r.auroc_sd),
                         "–" if r.n_seeds is None else str(r.n_seeds)) for r in found]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _json(root: Path, *args: str) -> Any:
    result = run_dvc(root, *args, "--json")
    if result.returncode != 0:
        raise FedmlpError(f"dvc {' '.join(args)}: {last_line(result)}")
    try:
        return json.loads(result.stdout or "null")
    except ValueError:
        raise FedmlpError(f"dvc {' '.join(args)} --json: not JSON ({one_line(result.stdout[:200])})") from None


def workspace_metrics(root: Path) -> dict[str, Any]:
    """The workspace's results/metrics.json as ``dvc metrics show`` reads it."""
    shown = _json(root, "metrics", "show")
    entry = ((shown or {}).get("") or {}).get("data", {}).get(METRICS_FILE) or {}
    if "data" not in entry:
        why = one_line(json.dumps(entry.get("error"))) if entry.get("error") else "not found"
        raise FedmlpError(f"{METRICS_FILE}: {why}; run 'make run' or 'make pull' first")
    return entry["data"]


def _flat(params: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config sections as dotted keys (train.rounds)."""
    if isinstance(params, dict) and params:
        return {k: v for key, value in params.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else str(key)).items()}
    return {prefix: params}


def experiments(root: Path) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Each row of ``dvc exp show`` (workspace, commits, their experiments) that has metrics: its name,
    the config keys whose value differs from the baseline commit's, and its metrics."""
    found = []
    for commit in _json(root, "exp", "show") or []:
        base = _flat(((commit.get("data") or {}).get("params") or {}).get("config/config.yaml", {}).get("data", {}))
        runs = [commit] + [e["revs"][0] for e in commit.get("experiments") or [] if e.get("revs")]
        for run in runs:
            data = run.get("data") or {}
            metrics = (data.get("metrics") or {}).get(METRICS_FILE, {}).get("data")
            if not metrics:
                continue
            params = _flat((data.get("params") or {}).get("config/config.yaml", {}).get("data", {}))
            changed = {k: v for k, v in params.items() if base.get(k) != v}
            rev = str(run.get("rev", "?"))
            name = run.get("name") or (rev[:7] if len(rev) == 40 else rev)  # a commit hash, or "workspace"
            found.append((name, changed, metrics))
    return found
