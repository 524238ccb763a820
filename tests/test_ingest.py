"""Ingest: label parsing by ID, skipped files listed, the store's format and checksums."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from fedmlp.config import PreprocessConfig
from fedmlp.errors import FedmlpError
from fedmlp.sources import rsna
from fedmlp.sources.rsna import ingest_ich
from fedmlp.store import ImageStore, sha256


def test_store_format(store: ImageStore, raw_dataset: Path) -> None:
    assert store.images.shape == (80, 1, 32, 32) and store.images.dtype == np.uint8
    assert isinstance(store.images, np.memmap)
    assert store.classes == list(rsna.CLASSES)
    labels = rsna.read_labels(raw_dataset / rsna.LABEL_FILE).table
    np.testing.assert_array_equal(store.labels, labels.loc[store.image_ids, list(rsna.CLASSES)].to_numpy())
    manifest = store.manifest
    assert manifest["n_images"] == 80 and manifest["skipped"] == []
    assert manifest["duplicate_label_rows"] == 12
    assert manifest["repaired_signed_as_unsigned"] > 0
    for name, digest in manifest["sha256"].items():
        assert sha256(store.root / name) == digest
    assert store.images[:, 0].max() == 255 and store.images.mean() > 20


def test_bsb_store_has_three_channels(raw_dataset: Path, tmp_path: Path) -> None:
    ingest_ich(raw_dataset, tmp_path / "bsb", PreprocessConfig(windowing="bsb", size=24), "synthetic-ich")
    assert ImageStore.open(tmp_path / "bsb").images.shape == (80, 3, 24, 24)


@pytest.fixture()
def damaged_copy(raw_dataset: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """The raw dataset with one truncated DICOM, one non-DICOM and one image without label rows."""
    root = tmp_path / "raw"
    shutil.copytree(raw_dataset, root)
    files = sorted((root / rsna.IMAGE_DIR).iterdir())
    truncated, garbage = files[3], files[7]
    truncated.write_bytes(truncated.read_bytes()[:-500])
    garbage.write_bytes(b"this is not a DICOM file")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / rsna.IMAGE_DIR / "ID_00000000f.dcm")
    return root, [truncated.stem, garbage.stem, "ID_00000000f"]


def test_unreadable_files_are_skipped_and_listed(damaged_copy: tuple[Path, list[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, bad = damaged_copy
    manifest = ingest_ich(root, tmp_path / "store", PreprocessConfig(size=16), "synthetic-ich", workers=2)
    skipped = {entry["image_id"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == set(bad)
    assert bad[0] in skipped[bad[0]] or f"{bad[0]}.dcm" in skipped[bad[0]]
    assert "label" in skipped["ID_00000000f"]
    store = ImageStore.open(tmp_path / "store")
    assert store.images.shape == (78, 1, 16, 16)  # shrunk in place to the readable images
    assert set(store.image_ids).isdisjoint(bad)
    assert all(b in caplog.text for b in bad[:2])


def test_bad_label_file_is_named(raw_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "raw"
    shutil.copytree(raw_dataset, root)
    label_file = root / rsna.LABEL_FILE
    lines = label_file.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",7"
    label_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(FedmlpError, match=r"stage_2_train\.csv:6: label '?7'? is not 0 or 1"):
        ingest_ich(root, tmp_path / "store", PreprocessConfig(size=16), "synthetic-ich")
    assert not (tmp_path / "store").exists()


def test_disagreeing_duplicates_are_refused(raw_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "raw"
    shutil.copytree(raw_dataset, root)
    label_file = root / rsna.LABEL_FILE
    text = label_file.read_text()
    first = text.splitlines()[1]
    flipped = first[:-1] + ("0" if first.endswith("1") else "1")
    label_file.write_text(text + flipped + "\n")
    with pytest.raises(FedmlpError, match="disagree"):
        rsna.read_labels(label_file)


def test_rebuilds_over_what_is_left_of_a_store(raw_dataset: Path, tmp_path: Path) -> None:
    """Snakemake removes a rule's declared outputs before rerunning it; whatever is left is ours."""
    out = tmp_path / "store"
    ingest_ich(raw_dataset, out, PreprocessConfig(size=16), "synthetic-ich")
    for name in ("images.npy", "labels.csv", "manifest.json"):
        (out / name).unlink()
    ingest_ich(raw_dataset, out, PreprocessConfig(size=16), "synthetic-ich")
    assert ImageStore.open(out).images.shape == (80, 1, 16, 16)


def test_refuses_to_overwrite_a_foreign_directory(raw_dataset: Path, tmp_path: Path) -> None:
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FedmlpError, match="refusing to overwrite"):
        ingest_ich(raw_dataset, precious, PreprocessConfig(size=16), "synthetic-ich")
    assert (precious / "notes.txt").read_text() == "keep me"


def test_manifest_is_valid_json(store: ImageStore) -> None:
    data = json.loads((store.root / "manifest.json").read_text())
    assert data["windowing"] == "header" and data["size"] == 32 and data["channels"] == 1


def test_ich_ingest_on_real_head_ct_in_the_kaggle_layout(tmp_path: Path) -> None:
    """Real DICOMs (pydicom-data's head CT; pydicom's CT_small, which has no window tags) as a Kaggle download."""
    root = tmp_path / "rsna"
    (root / rsna.IMAGE_DIR).mkdir(parents=True)
    head, small = get_testdata_file("693_UNCR.dcm"), get_testdata_file("CT_small.dcm")
    ids = {"ID_0000000a1": head, "ID_0000000a2": head, "ID_0000000b1": small}
    for image_id, source in ids.items():
        shutil.copy(source, root / rsna.IMAGE_DIR / f"{image_id}.dcm")
    rows = ["ID,Label"] + [f"{i}_{s},{int(s in ('subdural', 'any') and i.endswith('2'))}" for i in ids for s in rsna.SUBTYPES]
    (root / rsna.LABEL_FILE).write_text("\n".join(rows) + "\n")

    lenient = PreprocessConfig(windowing="header", size=64, max_skipped_fraction=0.5)  # 1 of 3 files has no window
    manifest = ingest_ich(root, tmp_path / "store", lenient, "ich")
    assert [s["image_id"] for s in manifest["skipped"]] == ["ID_0000000b1"]
    assert "WindowCenter" in manifest["skipped"][0]["reason"]
    store = ImageStore.open(tmp_path / "store")
    assert store.image_ids == ["ID_0000000a1", "ID_0000000a2"]
    assert store.labels[:, rsna.CLASSES.index("subdural")].tolist() == [0, 1]
    assert np.array_equal(store.images[0], store.images[1]) and store.images.std() > 30

    bsb = ingest_ich(root, tmp_path / "bsb", PreprocessConfig(windowing="bsb", size=64), "ich")
    assert bsb["n_images"] == 3 and bsb["channels"] == 3  # bsb needs no header window
