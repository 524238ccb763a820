"""The datasets the workflow knows, one :class:`Source` each, as the method registry holds the methods.

Each dataset is one module of :mod:`fedmlp.sources` that defines ``SOURCE = Source(...)``: how its
raw files arrive (generated, downloaded, or the user's own), their layout, its classes, its config
section's dataclass, how it is downloaded and ingested. Everything else is derived from it: the
schema's ``dataset`` names and the dataset's section (:func:`fedmlp.workflow_config.workflow_schema`),
what the Snakemake rules do with it (workflow/rules/common.smk names no dataset), ``fedmlp ingest``
and ``fedmlp download``, the DVC data stage's params and the code fingerprints of the rules that go
through here. Adding a dataset: its module, its line in :data:`MODULES`, and its section in
config/config.yaml (docs/adding-a-dataset.md).

The names are listed here, not found by importing the modules: the CLI lists them at start-up, which
must not pay for Pillow, pydicom and scipy (about a second).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from fedmlp.errors import FedmlpError

# Dataset name → its module, in the order the schema, the CLI and the docs list them.
MODULES = {
    "synthetic-ich": "fedmlp.sources.synthetic",
    "ich": "fedmlp.sources.kaggle",
    "chestxray14": "fedmlp.sources.nih",
    "custom": "fedmlp.sources.custom",
}

# (raw directory, store directory, preprocess section, the source's parsed section, workers, skipped-images report)
Ingest = Callable[[Path, Path, Any, Any, int, "Path | None"], Any]


@dataclass(frozen=True)
class Source:
    name: str
    arrives: Literal["generated", "downloaded", "user"]  # generated per draw; downloaded (or <section>.root); the user's own
    summary: str  # one line for the schema's dataset description and the docs
    section: str  # its config section: the schema's from ``config``, DVC's data params, what ``download`` and ``ingest`` read
    config: type  # the dataclass of that section (fields made with fedmlp.schema.setting: descriptions, bounds)
    classes: Callable[[Any], list[str]]  # from the parsed section
    ingest: Ingest
    ingest_reads_section: bool = False  # ingest reads the section (--source-settings): a changed value there reruns ingest
    layout: tuple[str, str] | None = None  # label file and image directory under the raw directory (None: named by the section)
    fixed_prep: str | None = None  # the store name's prefix when preprocess.windowing does not apply (PNG radiographs)
    official_split: bool = False  # split.method official: the source's own patient-level lists
    download: Callable[[Path, Any], None] | None = None  # "downloaded": fill the raw directory from the parsed section
    # The user's own data ("user"): its section checked before planning, its raw directory and input
    # files, and a fingerprint of the images the inputs list (a param: a changed image reruns ingest).
    check: Callable[[dict[str, Any]], None] | None = None
    raw: Callable[[dict[str, Any]], str] | None = None
    inputs: Callable[[dict[str, Any]], dict[str, str]] | None = None
    fingerprint: Callable[[dict[str, Any]], str] | None = None

    def parse(self, settings: Any) -> Any:
        """The section as its dataclass; errors name the key (``custom.root``)."""
        from fedmlp.config import from_dict

        return from_dict(self.config, settings, self.section)


def names() -> list[str]:
    """Every dataset's name, without importing its module."""
    return list(MODULES)


@cache
def get(name: str) -> Source:
    if name not in MODULES:
        raise FedmlpError(f"config key 'dataset': {name!r} is not one of {', '.join(MODULES)}")
    source = importlib.import_module(MODULES[name]).SOURCE
    if source.name != name:
        raise TypeError(f"{MODULES[name]}.SOURCE is named {source.name!r}, listed as {name!r}")
    return source


def sources() -> dict[str, Source]:
    """Every dataset's source (imports every source module)."""
    return {name: get(name) for name in MODULES}


def data_sections() -> list[str]:
    """The config sections of every source, in registry order (the DVC data stage's params)."""
    return [source.section for source in sources().values()]


def named(arrives: str) -> list[str]:
    """The sources that arrive so ("downloaded": the download rule's datasets)."""
    return [name for name, source in sources().items() if source.arrives == arrives]


def schema_sections() -> dict[str, dict[str, Any]]:
    """Each source's config section as JSON schema, from its dataclass (fedmlp.schema)."""
    from fedmlp.schema import dataclass_schema

    return {source.section: dataclass_schema(source.config) for source in sources().values()}


def dataset_description() -> str:
    """What the schema says of each dataset name."""
    return "; ".join(f"{name}: {source.summary}" for name, source in sources().items())
