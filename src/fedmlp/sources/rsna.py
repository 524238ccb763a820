"""The RSNA Intracranial Hemorrhage layout: ``stage_2_train/ID_<9 hex>.dcm`` + ``stage_2_train.csv``.

The label file has one row per image and subtype, ``ID_<id>_<subtype>,Label``. It is parsed by
splitting the ID, never by row position: the real file repeats 4 images (24 rows).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from fedmlp.atomic import atomic_path
from fedmlp.config import PreprocessConfig
from fedmlp.errors import FedmlpError, one_line, printable
from fedmlp.ingest import Candidates, decode_dicom, list_images, require_layout, write_store
from fedmlp.windowing import channels

log = logging.getLogger(__name__)

SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any")
CLASSES = SUBTYPES[:5]  # the paper drops "any": it is the union of the five
IMAGE_DIR = "stage_2_train"
LABEL_FILE = "stage_2_train.csv"


@dataclass(frozen=True)
class IchLabels:
    """Wide label table (index ``image_id``, one 0/1 column per subtype) and what parsing found."""

    table: pd.DataFrame
    duplicate_rows: int
    duplicated_images: list[str]


def read_labels(path: Path) -> IchLabels:
    """Parse and check the label file; every error names the file, and the line where there is one."""
    try:
        raw = pd.read_csv(path, dtype="string", keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise FedmlpError(f"{path}: empty file (expected the header 'ID,Label' and one row per image and subtype)") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise FedmlpError(f"{path}: cannot read label file ({one_line(exc)})") from None
    missing = {"ID", "Label"} - set(raw.columns)
    if missing:
        raise FedmlpError(f"{path}:1: missing column(s) {', '.join(sorted(missing))}; expected header 'ID,Label', found {','.join(raw.columns)!r}")
    if raw.empty:
        raise FedmlpError(f"{path}: no label rows after the header")
    parts = raw["ID"].str.rsplit("_", n=1, expand=True)
    if parts.shape[1] != 2 or parts.isna().any().any():
        line = int(parts.isna().any(axis=1).idxmax()) + 2 if parts.shape[1] == 2 else 2
        raise FedmlpError(f"{path}:{line}: ID {raw['ID'].iloc[line - 2]!r} is not of the form ID_<hex>_<subtype>")
    frame = pd.DataFrame({"image_id": parts[0], "subtype": parts[1], "label": raw["Label"].str.strip()})
    unknown = ~frame["subtype"].isin(SUBTYPES)
    if unknown.any():
        i = int(unknown.to_numpy().argmax())
        raise FedmlpError(f"{path}:{i + 2}: unknown subtype {frame['subtype'].iloc[i]!r} (expected one of {', '.join(SUBTYPES)})")
    bad_label = ~frame["label"].isin(["0", "1"])
    if bad_label.any():
        i = int(bad_label.to_numpy().argmax())
        raise FedmlpError(f"{path}:{i + 2}: label {str(raw['Label'].iloc[i])!r} is not 0 or 1")
    frame["label"] = frame["label"].astype("int8")

    keyed = frame.duplicated(["image_id", "subtype"], keep=False)
    duplicate_rows = int(frame.duplicated(["image_id", "subtype"]).sum())
    if duplicate_rows:
        disagree = frame[keyed].groupby(["image_id", "subtype"])["label"].nunique() > 1
        if disagree.any():
            image_id, subtype = disagree[disagree].index[0]
            rows = frame[(frame["image_id"] == image_id) & (frame["subtype"] == subtype)]
            lines = ", ".join(str(i + 2) for i in rows.index)
            values = " vs ".join(str(v) for v in rows["label"])
            raise FedmlpError(f"{path}:{lines}: duplicate rows for {printable(image_id)}_{subtype} disagree on the label ({values})")
    duplicated_images = sorted(frame.loc[keyed, "image_id"].unique())
    frame = frame.drop_duplicates(["image_id", "subtype"])
    absent = [s for s in SUBTYPES if s not in set(frame["subtype"])]
    if absent:  # not one image has it: no NaN in the pivot below would show it
        raise FedmlpError(f"{path}: no row for subtype(s) {', '.join(absent)} in the whole file (every image needs one row "
                          f"per subtype: {', '.join(SUBTYPES)}); is the file complete?")
    table = frame.pivot(index="image_id", columns="subtype", values="label")
    incomplete = table.isna().any(axis=1)
    if incomplete.any():
        image_id = table.index[incomplete.to_numpy().argmax()]
        lacking = [s for s in SUBTYPES if s not in table.columns or pd.isna(table.loc[image_id, s])]
        line = int(frame.index[(frame["image_id"] == image_id).to_numpy().argmax()]) + 2
        raise FedmlpError(f"{path}:{line}: image {printable(image_id)} has no row for subtype(s) {', '.join(lacking)}")
    table = table.reindex(columns=list(SUBTYPES)).astype("int8")
    table.columns.name = None
    return IchLabels(table=table, duplicate_rows=duplicate_rows, duplicated_images=duplicated_images)


def write_labels(table: pd.DataFrame, path: Path, repeat: list[str] = ()) -> None:
    """Write a wide table in Kaggle's long form; images in ``repeat`` get their 6 rows twice."""
    rows = []
    for image_id, labels in table.iterrows():
        block = [(f"{image_id}_{subtype}", int(labels[subtype])) for subtype in SUBTYPES]
        rows.extend(block * (2 if image_id in repeat else 1))
    with atomic_path(path) as tmp:  # written last: its presence means the dataset is complete
        pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(tmp, index=False)


def image_path(root: Path, image_id: str) -> Path:
    return root / IMAGE_DIR / f"{image_id}.dcm"


def ich_candidates(raw_dir: Path) -> Candidates:
    """The Kaggle RSNA layout (also what the synthetic source writes): labels parsed by ID."""
    label_path, image_dir = require_layout(raw_dir, LABEL_FILE, IMAGE_DIR, "expected the Kaggle layout")
    parsed = read_labels(label_path)
    if parsed.duplicate_rows:
        log.info("%s: %d duplicate rows (%d images listed more than once); identical duplicates are merged",
                 label_path, parsed.duplicate_rows, len(parsed.duplicated_images))
    regular, special = list_images(image_dir, ".dcm")
    on_disk = {name[:-4] for name in regular}
    labelled = set(parsed.table.index)
    ids = sorted(labelled & on_disk)
    labels_without_image = sorted(labelled - on_disk - {entry["image_id"] for entry in special})
    if labels_without_image:
        log.warning("%d labelled images have no file in %s (first: %s)", len(labels_without_image), image_dir, printable(labels_without_image[0]))
    return Candidates(
        ids=ids,
        paths=[image_path(raw_dir, i) for i in ids],
        labels=parsed.table[list(CLASSES)],
        skipped=special + [{"image_id": i, "reason": f"{image_path(raw_dir, i)}: no rows in the label file {label_path}"}
                           for i in sorted(on_disk - labelled)],
        facts={
            "labelled_without_image": len(labels_without_image),
            "duplicate_label_rows": parsed.duplicate_rows,
            "duplicated_images": parsed.duplicated_images,
        },
        unmatched=[{"image_id": i, "reason": f"listed in {label_path} but no file in {image_dir}"} for i in labels_without_image],
    )


def ingest_ich(raw_dir: Path, out_dir: Path, preprocess: PreprocessConfig, dataset: str, workers: int = 1,
               report: Path | None = None) -> dict[str, Any]:
    return write_store(
        out_dir, ich_candidates(raw_dir), partial(decode_dicom, preprocess=preprocess), channels(preprocess.windowing),
        preprocess.size, {"dataset": dataset, "windowing": preprocess.windowing}, workers, preprocess.max_skipped_fraction, report,
    )


def ingest_as(dataset: str) -> Callable[..., dict[str, Any]]:
    """The ingest of a dataset in this layout (synthetic-ich, ich): DICOMs windowed by preprocess, no settings of its own."""

    def ingest(raw: Path, out: Path, preprocess: PreprocessConfig, config: Any, workers: int, report: Path | None) -> dict[str, Any]:
        return ingest_ich(raw, out, preprocess, dataset, workers=workers, report=report)

    return ingest
