"""Your own data (dataset: custom): a folder of images and a labels CSV, through ingest, split,
partition and the workflow; and each error in the table as one line naming file, line and column."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom.data
import pytest
import yaml
from conftest import REPO
from PIL import Image
from test_workflow import snakemake

from fedmlp.config import PreprocessConfig, SplitConfig
from fedmlp.errors import FedmlpError
from fedmlp.partition import manifest_split
from fedmlp.sources import nih, rsna
from fedmlp.sources.custom import CustomConfig, check_assessed, decode_image, ingest_custom, read_table
from fedmlp.sources.registry import sources
from fedmlp.store import ImageStore

CLASSES = ["effusion", "nodule", "fracture"]
SITES = {  # site → the classes it assesses (overlapping sets); the rest it leaves empty
    "north": ["effusion", "nodule"],
    "south": ["nodule", "fracture"],
    "east": ["effusion", "fracture"],
}
DICOM = "east/scans/ct/slice.dcm"


def make_dataset(root: Path, per_site: int = 8, held_out: int = 6) -> Path:
    """PNG (8- and 16-bit, RGB) and JPEG images in nested folders, one real DICOM; three sites with
    overlapping class sets (empty cells for the classes a site does not assess), fully labelled val and
    test rows, one patient per two images. Returns the labels CSV."""
    rng = np.random.default_rng(0)
    rows = []

    def image(relative: str, kind: int) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (40, 36), dtype=np.uint8)
        if kind == 0:
            Image.fromarray(pixels).save(path)
        elif kind == 1:
            Image.fromarray(pixels.astype(np.uint16) * 200).save(path)  # 16-bit PNG
        elif kind == 2:
            Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(path)  # RGB
        else:
            Image.fromarray(pixels).convert("RGB").save(path, quality=90)

    n = 0
    for site, assessed in SITES.items():
        for i in range(per_site):
            suffix = ".jpg" if i % 4 == 3 else ".png"
            relative = f"{site}/batch{i % 2}/img{i}{suffix}"
            image(relative, i % 4)
            labels = {c: (str(int(rng.random() < 0.5)) if c in assessed else "") for c in CLASSES}
            rows.append({"image": relative, "site": site, "split": "train", "patient": f"p{n // 2}", **labels})
            n += 1
    for i in range(held_out):
        split = "test" if i < held_out // 2 + 1 else "val"
        relative = f"shared/{split}/img{i}.png"
        image(relative, 0)
        rows.append({"image": relative, "site": "north", "split": split, "patient": f"h{i}",
                     **{c: str((i + k) % 2) for k, c in enumerate(CLASSES)}})
    dicom = root / DICOM
    dicom.parent.mkdir(parents=True)
    shutil.copy(pydicom.data.get_testdata_file("CT_small.dcm"), dicom)
    rows.append({"image": DICOM, "site": "east", "split": "train", "patient": "d0", "effusion": "1", "nodule": "", "fracture": "0"})
    labels = root / "labels.csv"
    pd.DataFrame(rows, columns=["image", *CLASSES, "site", "split", "patient"]).to_csv(labels, index=False)
    return labels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("my-study")
    return root, make_dataset(root)


@pytest.fixture(scope="module")
def store(dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    root, labels = dataset
    out = tmp_path_factory.mktemp("stores") / "header24"
    ingest_custom(CustomConfig(root=str(root), labels=str(labels)), out, PreprocessConfig(size=24))
    return ImageStore.open(out, require_verified=True)


def test_every_image_type_is_ingested_and_sites_keep_their_classes(store: ImageStore, dataset: tuple[Path, Path]) -> None:
    root, labels = dataset
    table = pd.read_csv(labels, dtype=str, keep_default_na=False)
    assert store.classes == CLASSES
    assert store.image_ids == table["image"].tolist() and store.manifest["skipped"] == []
    assert store.images.shape == (len(table), 1, 24, 24)
    assert store.manifest["unassessed"] == {site: [c for c in CLASSES if c not in assessed] for site, assessed in SITES.items()}
    dicom = store.image_ids.index(DICOM)
    assert store.read(np.array([dicom])).std() > 0  # CT_small has no window in its header: its own min and max
    assert store.labels[dicom].tolist() == [1, 0, 0]  # the empty nodule cell is stored as 0 ...
    check = pytest.raises(FedmlpError, match="unassessed .*site 'north': fracture")
    with check:  # ... and refused to whatever would read it as a negative
        check_assessed(store.manifest, "method 'fedavg-full'")


def test_colour_becomes_luma_or_stays_rgb_and_16_bit_is_scaled(tmp_path: Path) -> None:
    colour = tmp_path / "colour.png"
    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    pixels[:, :16, 0] = 200  # red on the left, black on the right
    Image.fromarray(pixels).save(colour)
    rgb = decode_image(colour, PreprocessConfig(windowing="bsb", size=16)).image
    gray = decode_image(colour, PreprocessConfig(windowing="header", size=16)).image
    assert rgb.shape == (3, 16, 16) and rgb[0].max() == 200 and rgb[1].max() == 0
    assert gray.shape == (1, 16, 16) and abs(int(gray.max()) - 200 * 0.299) <= 1  # luma
    deep = tmp_path / "deep.png"
    Image.fromarray(np.linspace(1000, 60000, 32 * 32).reshape(32, 32).astype(np.uint16)).save(deep)
    scaled = decode_image(deep, PreprocessConfig(size=32)).image  # 16-bit: the image's min and max to 0 and 255
    assert scaled.min() == 0 and scaled.max() == 255


def test_the_split_column_is_kept_and_patients_never_straddle(store: ImageStore, dataset: tuple[Path, Path]) -> None:
    split, config, _ = manifest_split(store.manifest, store.candidates(), SplitConfig(val_fraction=0.2))
    table = pd.read_csv(dataset[1], dtype=str, keep_default_na=False).set_index("image")
    assert {i: "train" for i in split.train} | {i: "val" for i in split.val} | {i: "test" for i in split.test} == table["split"].to_dict()
    assert config.val_fraction == 0  # never carved from training rows, which may hold empty cells
    without = {k: v for k, v in store.manifest.items() if k != "splits"}
    drawn, _, patients = manifest_split(without, store.candidates(), SplitConfig(train_fraction=0.6, seed=3))
    test_patients = {patients[i] for i in drawn.test}
    assert drawn.test and not test_patients & {patients[i] for i in drawn.train}


def write_table(tmp_path: Path, rows: list[dict], columns: list[str] | None = None) -> tuple[Path, Path]:
    root = tmp_path / "data"
    for row in rows:
        path = root / row["image"]
        if not path.exists() and row["image"] != "ghost.png":
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 255, (20, 20), dtype=np.uint8)).save(path)
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows, columns=columns).to_csv(labels, index=False)
    return root, labels


GOOD = [
    {"image": "a/1.png", "x": "1", "y": "", "site": "s1", "split": "train"},
    {"image": "a/2.png", "x": "0", "y": "", "site": "s1", "split": "train"},
    {"image": "b/3.png", "x": "", "y": "1", "site": "s2", "split": "train"},
    {"image": "b/4.png", "x": "", "y": "0", "site": "s2", "split": "train"},
    {"image": "c/5.png", "x": "1", "y": "0", "site": "s1", "split": "test"},
]


@pytest.mark.parametrize("change, message", [
    ({4: {"y": ""}}, r"line 6, column 'y': empty in a test row \(c/5.png\); test and validation images must be fully labelled"),
    ({1: {"x": ""}}, r"line 3, column 'x': site 's1' leaves 'x' empty on 1 of its 2 training images and fills it on 1; "
                     r".*custom.partial_blanks"),
    ({2: {"image": "ghost.png"}}, r"line 4, column 'image': 'ghost.png' not found under"),
    ({3: {"image": "a/1.png"}}, r"line 5, column 'image': 'a/1.png' is listed again \(first on line 2\)"),
    ({0: {"x": "yes"}}, r"line 2, column 'x': 'yes' is not 1, 0 or empty"),
    ({1: {"x": "2"}}, r"line 3, column 'x': '2' is not 1, 0 or empty"),
    ({4: {"split": "dev"}}, r"line 6, column 'split': 'dev' is not one of train, val, test"),
])
def test_each_table_error_is_one_line_and_writes_nothing(tmp_path: Path, change: dict, message: str) -> None:
    rows = [{**row, **change.get(i, {})} for i, row in enumerate(GOOD)]
    root, labels = write_table(tmp_path, rows)
    out = tmp_path / "store"
    with pytest.raises(FedmlpError, match=message) as error:
        ingest_custom(CustomConfig(root=str(root), labels=str(labels)), out, PreprocessConfig(size=16))
    assert "\n" not in str(error.value) and str(labels) in str(error.value)
    assert not out.exists() and not list(tmp_path.glob("store*"))  # nothing half-written


def test_partial_blanks_say_what_the_empty_cells_mean(tmp_path: Path) -> None:
    rows = [{**row, **({"x": ""} if i == 1 else {})} for i, row in enumerate(GOOD)]
    root, labels = write_table(tmp_path, rows)
    negative = read_table(labels, root, "negative")
    assert negative.unassessed == {"s1": ["y"], "s2": ["x"]} and negative.labels.loc["a/2.png", "x"] == 0
    unlabelled = read_table(labels, root, "unlabelled")
    assert unlabelled.unassessed == {"s1": ["x", "y"], "s2": ["x"]}


@pytest.mark.slow
def test_custom_data_runs_through_the_workflow(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    """The tutorial's config on the example dataset: ingest → split → site partition → two methods → report."""
    root, labels = dataset
    config = {
        "dataset": "custom",
        "custom": {"root": str(root), "labels": str(labels)},
        "methods": ["fedavg-partial", "fedavg-masked"],
        "seeds": [0],
        "preprocess": {"size": 16},
        "federation": {"partition": "site", "annotated_per_client": [1, 2]},  # not used by site: one setting
        "model": {"width": 4},
        "train": {"rounds": 2, "batch_size": 8},
    }
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    [partition_file] = (tmp_path / "results/runs/custom/header16").rglob("partition.json")
    assert partition_file.parent.name == "site"  # the setting's name: the sites name the clients
    partition = json.loads(partition_file.read_text())
    assert [c["annotated_classes"] for c in partition["clients"]] == list(SITES.values())
    summary = pd.read_csv(tmp_path / "results" / "summary.csv")
    assert set(summary["method"]) == set(config["methods"])
    assert "Nothing to be done" in snakemake(tmp_path, config, "--dry-run").stdout
    (root / "north/batch0/img0.png").touch()  # a changed image reruns ingest
    assert "ingest" in snakemake(tmp_path, config, "--dry-run").stdout
    full = snakemake(tmp_path, {**config, "methods": ["fedavg-full"]}, "--until", "train")
    assert full.returncode != 0 and "reads the true labels of missing classes" in full.stderr


def test_the_schema_and_config_name_every_registered_source() -> None:
    """The registry is where a dataset is added: the schema's dataset names and sections derive from it,
    and config/config.yaml lists every section with its defaults."""
    from fedmlp.schema import dataclass_schema
    from fedmlp.sources import registry
    from fedmlp.workflow_config import workflow_schema

    schema = workflow_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")["properties"]
    defaults = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert schema["dataset"]["enum"] == registry.names() == list(sources())
    assert sources()["ich"].layout == (rsna.LABEL_FILE, rsna.IMAGE_DIR) and sources()["chestxray14"].layout == (nih.LABEL_FILE, nih.IMAGE_DIR)
    for source in sources().values():
        assert schema[source.section] == dataclass_schema(source.config) and source.section in defaults
        assert source.parse(defaults[source.section]) == source.config()  # the shipped section is the dataclass's defaults
        assert (source.download is not None) == (source.arrives == "downloaded")
    assert registry.data_sections() == [source.section for source in sources().values()]


def test_other_partitions_are_refused_where_sites_left_classes_unassessed(store: ImageStore, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    """iid would hand a client classes whose empty cells it would read as negatives; site is accepted."""
    from fedmlp.cli import main

    split, out = tmp_path / "split.json", tmp_path / "partition.json"
    assert main(["split", "--store", str(store.root), "--out", str(split)]) == 0
    iid = main(["partition", "--store", str(store.root), "--split", str(split), "--settings", '{"partition": "iid", "n_clients": 3}',
                "--out", str(out)])
    assert iid != 0 and not out.exists()
    assert "federation.partition': iid: the labels CSV leaves classes unassessed" in capsys.readouterr().err
    assert main(["partition", "--store", str(store.root), "--split", str(split), "--settings", '{"partition": "site"}', "--out", str(out)]) == 0
    clients = json.loads(out.read_text())["clients"]
    assert {i for c in clients for i in c["images"]} == {i for i in store.image_ids if store.manifest["splits"][i] == "train"}
