"""The datasets the workflow knows, one :class:`Source` each, as the method registry holds the methods.

Everything the Snakemake rules (workflow/rules/common.smk), ``fedmlp ingest`` and the DVC stages need
to know of a dataset is here: how its raw files arrive (generated, downloaded, or the user's own),
their layout, its classes, the config section its ingest reads, how its store is named. The rules
name no dataset. Adding a dataset: its module in :mod:`fedmlp.sources` (layout, labels, decoding,
writing the store through :func:`fedmlp.ingest.write_store`), one entry in :data:`SOURCES`, and its
config section in workflow/schemas/config.schema.yaml and config/config.yaml (tests/test_custom_data.py
checks that the schema's dataset names are these).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fedmlp.config import ChestXray14Config, CustomConfig, PreprocessConfig, from_dict
from fedmlp.errors import FedmlpError

# The sources' modules are imported where they are used: the CLI lists the dataset names from here at
# start-up, which must not pay for Pillow and pydicom. (Code fingerprints follow these imports too.)

# (raw directory, store directory, preprocess section, the source's own section, workers, skipped-images report)
Ingest = Callable[[Path, Path, PreprocessConfig, dict[str, Any], int, "Path | None"], Any]


@dataclass(frozen=True)
class Source:
    name: str
    arrives: Literal["generated", "downloaded", "user"]  # generated per draw; downloaded (or <name>.root); the user's own
    classes: Callable[[dict[str, Any]], list[str]]  # from the source's config section
    ingest: Ingest
    section: str | None = None  # the config section ingest reads (None: none)
    sections: tuple[str, ...] = ()  # every config section its data (generation, download, ingest) depends on: DVC's data params
    layout: tuple[str, str] | None = None  # label file and image directory under the raw directory (None: named by the section)
    fixed_prep: str | None = None  # the store name's prefix when preprocess.windowing does not apply (PNG radiographs)
    official_split: bool = False  # split.method official: the source's own patient-level lists
    # The user's own data ("user"): its section checked before planning, its raw directory and input
    # files, and a fingerprint of the images the inputs list (a param: a changed image reruns ingest).
    check: Callable[[dict[str, Any]], None] | None = None
    raw: Callable[[dict[str, Any]], str] | None = None
    inputs: Callable[[dict[str, Any]], dict[str, str]] | None = None
    fingerprint: Callable[[dict[str, Any]], str] | None = None


def _rsna_layout(name: str) -> Ingest:
    def ingest(raw: Path, out: Path, preprocess: PreprocessConfig, settings: dict[str, Any], workers: int, report: Path | None) -> Any:
        from fedmlp.ingest import ingest_ich

        return ingest_ich(raw, out, preprocess, name, workers=workers, report=report)

    return ingest


def _chestxray14(raw: Path, out: Path, preprocess: PreprocessConfig, settings: dict[str, Any], workers: int, report: Path | None) -> Any:
    from fedmlp.ingest import ingest_chestxray14

    classes = from_dict(ChestXray14Config, settings, "chestxray14").classes
    return ingest_chestxray14(raw, out, preprocess, classes, workers=workers, report=report)


def _custom(raw: Path, out: Path, preprocess: PreprocessConfig, settings: dict[str, Any], workers: int, report: Path | None) -> Any:
    from fedmlp.sources.custom import ingest_custom

    config = from_dict(CustomConfig, settings, "custom")
    for key in ("root", "labels"):
        if getattr(config, key) is None:
            raise FedmlpError(f"config key 'custom.{key}': required with dataset custom (docs/custom-data.md)")
    return ingest_custom(config, out, preprocess, workers=workers, report=report)


def _rsna_classes(settings: dict[str, Any]) -> list[str]:
    from fedmlp.sources.rsna import CLASSES

    return list(CLASSES)


def _custom_check(settings: dict[str, Any]) -> None:
    from fedmlp.sources.custom import check_settings

    check_settings(settings)


def _custom_classes(settings: dict[str, Any]) -> list[str]:
    from fedmlp.sources.custom import read_classes

    return read_classes(Path(settings["labels"]))


def _custom_fingerprint(settings: dict[str, Any]) -> str:
    from fedmlp.sources.custom import images_fingerprint

    return images_fingerprint(Path(settings["labels"]), Path(settings["root"]))


RSNA_LAYOUT = ("stage_2_train.csv", "stage_2_train")  # fedmlp.sources.rsna's LABEL_FILE and IMAGE_DIR (tests check)
NIH_LAYOUT = ("Data_Entry_2017_v2020.csv", "images")  # fedmlp.sources.nih's


SOURCES = {source.name: source for source in (
    Source("synthetic-ich", "generated", _rsna_classes, _rsna_layout("synthetic-ich"), layout=RSNA_LAYOUT, sections=("synthetic",)),
    Source("ich", "downloaded", _rsna_classes, _rsna_layout("ich"), layout=RSNA_LAYOUT, sections=("ich",)),
    Source("chestxray14", "downloaded", lambda settings: list(settings["classes"]), _chestxray14, section="chestxray14",
           sections=("chestxray14",), layout=NIH_LAYOUT, fixed_prep="png", official_split=True),
    Source("custom", "user", _custom_classes, _custom, section="custom", sections=("custom",), check=_custom_check,
           raw=lambda settings: settings["root"], inputs=lambda settings: {"raw_labels": settings["labels"]},
           fingerprint=_custom_fingerprint),
)}


def get(name: str) -> Source:
    if name not in SOURCES:
        raise FedmlpError(f"config key 'dataset': {name!r} is not one of {', '.join(SOURCES)}")
    return SOURCES[name]


def data_sections() -> list[str]:
    """The config sections of every source's data, in registry order (the DVC data stage's params)."""
    return list(dict.fromkeys(name for source in SOURCES.values() for name in source.sections))


def named(arrives: str) -> list[str]:
    """The sources that arrive so ("downloaded": the download rule's datasets)."""
    return [name for name, source in SOURCES.items() if source.arrives == arrives]
