"""The RSNA Intracranial Hemorrhage layout: ``stage_2_train/ID_<9 hex>.dcm`` + ``stage_2_train.csv``.

The label file has one row per image and subtype, ``ID_<id>_<subtype>,Label``. It is parsed by
splitting the ID, never by row position: the real file repeats 4 images (24 rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedmlp.atomic import atomic_path
from fedmlp.errors import FedmlpError, one_line, printable

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
