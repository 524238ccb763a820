"""Progress bars that stay readable in log files.

In a terminal, bars refresh twice a second. In a log file (Snakemake redirects stderr), long bars
refresh every 15 s and short-lived ones (``transient=True``, e.g. one per training round, whose
result is logged anyway) are not drawn. ``FEDMLP_PROGRESS=0`` turns all bars off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def bar(iterable: Iterable[Any] | None = None, transient: bool = False, **kwargs: Any) -> tqdm:
    interactive = sys.stderr.isatty()
    disabled = os.environ.get("FEDMLP_PROGRESS", "1") == "0" or (transient and not interactive)
    return tqdm(
        iterable,
        mininterval=0.5 if interactive else 15,
        disable=disabled,
        dynamic_ncols=interactive,
        leave=not transient,
        **kwargs,
    )
