"""Per-round metrics written as the rounds happen, with DVCLive: a long cluster job can be watched
(``dvc plots show <run>/live/plots/metrics``, or the TSV files) before its outputs exist.

``<dir>/plots/metrics/{train_loss,test_mAP,test_AUROC,val_mAP,val_AUROC}.tsv`` get one row per
scored round (``step`` is the round number; no validation files without a validation set) and
``<dir>/metrics.json`` the latest values. The directory is rebuilt from the start of
every run: a resumed run first writes again the rounds its resume state restored (and a FedMLP stage
2 the warm-up's), so the files always hold every round so far, once, whatever Snakemake removed.

DVCLive is kept to writing files. It would otherwise open the DVC repository around the working
directory (or initialise one in a Git repository without DVC), and inside ``dvc exp run`` stage the
directory in Git and post to DVC Studio when configured: from each of many parallel jobs. Here no
repository is opened, no experiment is saved, no dvc.yaml or report is written, nothing is posted.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

METRICS = ("train_loss", "test_mAP", "test_AUROC", "val_mAP", "val_AUROC")
ENVIRONMENT = ("DVCLIVE_RESUME",)  # read by Live(); a run here always starts its files anew


@contextlib.contextmanager
def _without(names: tuple[str, ...]) -> Iterator[None]:
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _logger(directory: Path):
    from dvclive import Live

    class FilesOnly(Live):
        """Live without its DVC, Git and Studio integration (see the module docstring)."""

        def _init_dvc(self) -> None:
            self._save_dvc_exp = False

        def _init_studio(self) -> None:
            self._studio_events_to_skip.update({"start", "data", "done"})

    with _without(ENVIRONMENT):
        return FilesOnly(str(directory), resume=False, report=None, save_dvc_exp=False, dvcyaml=None, monitor_system=False)


class LiveMetrics:
    """One run's live metrics directory; :meth:`log` takes a round's record (a RoundRecord or its row)."""

    def __init__(self, directory: Path, earlier: list[Mapping[str, Any]] = ()) -> None:
        self.directory = Path(directory)
        self._live = _logger(self.directory)
        for row in earlier:
            self.log(row)

    def log(self, record: Any) -> None:
        row = record if isinstance(record, Mapping) else vars(record)
        self._live.step = int(row["round"])
        for name in METRICS:
            value = row.get(name)
            if value is not None and math.isfinite(float(value)):  # rounds without a score (or validation set) have none
                self._live.log_metric(name, float(value))
        self._live.next_step()

    def close(self) -> None:
        self._live.end()
