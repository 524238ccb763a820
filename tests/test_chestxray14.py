"""ChestX-ray14 on the real label file (shipped in the torchxrayvision wheel): the paper's split and
partition bit for bit, the ingest on generated PNGs in the real layout, and the download."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from importlib.resources import files as package_files
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from httpserver import Files, serve
from PIL import Image

from fedmlp.cli import main
from fedmlp.config import PreprocessConfig
from fedmlp.errors import FedmlpError
from fedmlp.sources import nih
from fedmlp.sources.nih import ChestXray14Config, ingest_chestxray14
from fedmlp.store import ImageStore

DATA_ENTRY = Path(str(package_files("torchxrayvision") / "data" / "Data_Entry_2017_v2020.csv.gz"))


@pytest.fixture(scope="module")
def entries() -> pd.DataFrame:
    return nih.read_data_entry(DATA_ENTRY)


def test_label_file_facts(entries: pd.DataFrame) -> None:
    assert len(entries) == 112_120 and "Patient Sex" in entries.columns
    assert len(nih.pa_rows(entries)) == 67_310
    table = nih.multi_hot(entries.head(3), list(nih.FINDINGS))
    assert table.loc[1, "Cardiomegaly"] == 1 and table.loc[1, "Emphysema"] == 1 and table.loc[1, "Mass"] == 0


def test_both_header_spellings(tmp_path: Path) -> None:
    with gzip.open(DATA_ENTRY, "rt") as handle:
        head = [next(handle) for _ in range(5)]
    (tmp_path / "old.csv").write_text("".join(head).replace("Patient Gender", "Patient Sex"))
    (tmp_path / "new.csv").write_text("".join(head))
    assert list(nih.read_data_entry(tmp_path / "old.csv").columns) == list(nih.read_data_entry(tmp_path / "new.csv").columns)


def test_unknown_finding_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("Image Index,Finding Labels,View Position,Patient ID\na.png,Mass|Pneumonitis,PA,1\n")
    with pytest.raises(FedmlpError, match=r"bad.csv:2: unknown finding 'Pneumonitis'"):
        nih.multi_hot(nih.read_data_entry(tmp_path / "bad.csv"), ["Mass"], tmp_path / "bad.csv")


def test_paper_split_command_reproduces_the_paper(tmp_path: Path) -> None:
    assert main(["paper-split", "chestxray14", "--data-entry", str(DATA_ENTRY), "--out", str(tmp_path)]) == 0
    artifact = json.loads((tmp_path / "partition.json").read_text())
    train = [i for c in artifact["clients"] for i in c["images"]]
    assert len(artifact["test"]) == 20_194
    assert [len(c["images"]) for c in artifact["clients"]] == [5_889] * 8
    assert len(set(train)) == len(train) and set(train).isdisjoint(artifact["test"])
    assert artifact["classes"] == list(nih.CHESTXRAY8)
    assert [c["annotated_classes"] for c in artifact["clients"]] == [[c] for c in nih.CHESTXRAY8]
    # the training list itself: 47,116 names, the first three as the paper's code orders them
    pa = nih.pa_rows(nih.read_data_entry(DATA_ENTRY))["Image Index"].tolist()
    perm = np.random.RandomState(2023).permutation(len(pa))
    assert [pa[i] for i in perm[20_194:20_197]] == ["00011238_000.png", "00027328_000.png", "00006052_000.png"]
    first_client = artifact["clients"][0]["images"]
    train_list = [pa[i] for i in perm[20_194:]]
    state = np.random.RandomState(1037)
    expected = [train_list[i] for i in list(set(state.choice(list(range(47_116)), 5_889, replace=False)))]
    assert first_client == expected


def _png(kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "rgba":
        image = Image.fromarray(rng.integers(0, 256, (40, 48, 4), dtype=np.uint8), mode="RGBA")
    elif kind == "16bit":
        image = Image.fromarray(rng.integers(0, 65535, (40, 48), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_release(entries: pd.DataFrame) -> dict[str, bytes]:
    """Two small archives of generated PNGs named as real PA images, plus the real label file."""
    pa = nih.pa_rows(entries)["Image Index"].tolist()
    names = pa[:24] + [entries[entries["View Position"] == "AP"]["Image Index"].iloc[0]]  # one AP view: left out
    archives = {}
    for part, chunk in enumerate((names[:12], names[12:]), start=1):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for i, name in enumerate(chunk):
                data = _png("rgba" if i == 1 else "16bit" if i == 2 else "gray", 100 * part + i)
                info = tarfile.TarInfo(f"images/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        archives[f"images_{part:03d}.tar.gz"] = buffer.getvalue()
    with gzip.open(DATA_ENTRY) as handle:
        archives[nih.LABEL_FILE] = handle.read()
    archives["train_val_list.txt"] = ("\n".join(pa[6:]) + "\n").encode()
    archives["test_list.txt"] = ("\n".join(pa[:6]) + "\n").encode()
    return archives


@pytest.fixture()
def release_archives(monkeypatch: pytest.MonkeyPatch, small_release: dict[str, bytes]) -> None:
    """Our two small archives stand in for NIH's twelve (names, links and MD5s are module constants)."""
    test_archives = tuple(
        nih.Archive(name, f"token{i}.gz", hashlib.md5(small_release[name]).hexdigest())
        for i, name in enumerate(["images_001.tar.gz", "images_002.tar.gz"])
    )
    monkeypatch.setattr(nih, "ARCHIVES", test_archives)


def test_download_then_ingest(tmp_path: Path, small_release: dict[str, bytes], release_archives: None) -> None:
    served = Files({f"/static/token{i}.gz": small_release[f"images_00{i + 1}.tar.gz"] for i in range(2)})
    served.content.update({f"/meta/{name}": small_release[name] for name in (nih.LABEL_FILE, *nih.SPLIT_FILES)})
    raw = tmp_path / "raw"
    with serve(served) as url:
        config = ChestXray14Config(archive_base_url=f"{url}/static", metadata_base_url=f"{url}/meta")
        nih.download(raw, config)
        nih.download(raw, config)  # everything is there: nothing is fetched again
    assert len(served.requests) == 5
    assert len(list((raw / "images").iterdir())) == 25 and not (raw / "archives" / "images_001.tar.gz").exists()

    manifest = ingest_chestxray14(raw, tmp_path / "store", PreprocessConfig(size=32), list(nih.CHESTXRAY8))
    store = ImageStore.open(tmp_path / "store")
    entries = nih.read_data_entry(raw / nih.LABEL_FILE)
    pa = nih.pa_rows(entries)
    assert store.image_ids == pa["Image Index"].tolist()[:24]  # PA only, in file order
    assert store.images.shape == (24, 1, 32, 32) and manifest["labelled_without_image"] == 67_310 - 24
    expected = nih.multi_hot(pa.head(24), list(nih.CHESTXRAY8))
    np.testing.assert_array_equal(store.labels, expected[list(nih.CHESTXRAY8)].to_numpy())
    assert store.images[1].std() > 0 and store.images[2].max() > 0  # the RGBA and the 16-bit images

    assert main(["split", "--store", str(tmp_path / "store"), "--raw", str(raw), "--out", str(tmp_path / "split.json"),
                 "--settings", json.dumps({"method": "official"})]) == 0
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["test"] == store.image_ids[:6] and split["train"] == store.image_ids[6:] and "val" not in split

    # a validation set of the official split is drawn by patient, from the training list only
    assert main(["split", "--store", str(tmp_path / "store"), "--raw", str(raw), "--out", str(tmp_path / "split-val.json"),
                 "--settings", json.dumps({"method": "official", "val_fraction": 0.3})]) == 0
    carved = json.loads((tmp_path / "split-val.json").read_text())
    assert carved["test"] == split["test"] and sorted(carved["train"] + carved["val"]) == sorted(split["train"])
    patient = dict(zip(entries["Image Index"], entries["Patient ID"]))
    val_patients = {patient[i] for i in carved["val"]}
    assert len(carved["val"]) >= round(0.3 * 18) and val_patients.isdisjoint(patient[i] for i in carved["train"])
    assert len(val_patients) < len(carved["val"])  # some patient has several images, all on the validation side


def test_missing_metadata_says_where_to_get_it(tmp_path: Path, small_release: dict[str, bytes], release_archives: None) -> None:
    served = Files({f"/static/token{i}.gz": small_release[f"images_00{i + 1}.tar.gz"] for i in range(2)})
    with serve(served) as url, pytest.raises(FedmlpError, match=r"Data_Entry_2017_v2020.csv: not found; download .*nihcc.app.box.com.*chestxray14.metadata_base_url"):
        nih.download(tmp_path / "raw", ChestXray14Config(archive_base_url=f"{url}/static"))


def test_wrong_archive_checksum_stops_before_extraction(tmp_path: Path, small_release: dict[str, bytes], release_archives: None) -> None:
    served = Files({"/static/token0.gz": small_release["images_002.tar.gz"]})  # the wrong file behind the link
    with serve(served) as url, pytest.raises(FedmlpError, match="images_001.tar.gz: MD5"):
        nih.download(tmp_path / "raw", ChestXray14Config(archive_base_url=f"{url}/static"))
    assert not (tmp_path / "raw" / "images").exists() and (tmp_path / "raw/archives/images_001.tar.gz.bad-md5").exists()
