"""The synthetic source writes the Kaggle RSNA layout, readable by the real-data code path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from fedmlp.config import SyntheticConfig
from fedmlp.dicom import read_ct
from fedmlp.seeding import numpy_rng
from fedmlp.sources import rsna, synthetic


def test_layout_and_label_file(raw_dataset: Path, synthetic_config: SyntheticConfig) -> None:
    files = sorted((raw_dataset / rsna.IMAGE_DIR).iterdir())
    assert len(files) == synthetic_config.n_images
    assert all(re.fullmatch(r"ID_[0-9a-f]{9}\.dcm", f.name) for f in files)

    raw = pd.read_csv(raw_dataset / rsna.LABEL_FILE)
    assert list(raw.columns) == ["ID", "Label"]
    assert raw["ID"].str.fullmatch(r"ID_[0-9a-f]{9}_(epidural|intraparenchymal|intraventricular|subarachnoid|subdural|any)").all()
    expected_rows = 6 * (synthetic_config.n_images + synthetic_config.duplicated_images)
    assert len(raw) == expected_rows

    parsed = rsna.read_labels(raw_dataset / rsna.LABEL_FILE)
    assert parsed.duplicate_rows == 6 * synthetic_config.duplicated_images
    assert len(parsed.duplicated_images) == synthetic_config.duplicated_images
    assert set(parsed.table.index) == {f.stem for f in files}
    table = parsed.table
    assert (table["any"] == table[list(rsna.CLASSES)].max(axis=1)).all()
    assert 0 < table[list(rsna.CLASSES)].to_numpy().mean() < 0.6


def test_dicom_tags_and_quirks(raw_dataset: Path) -> None:
    datasets = [pydicom.dcmread(f) for f in sorted((raw_dataset / rsna.IMAGE_DIR).iterdir())]
    normal = [d for d in datasets if d.PixelRepresentation == 1]
    quirky = [d for d in datasets if d.BitsStored == 12 and d.PixelRepresentation == 0 and float(d.RescaleIntercept) > -100]
    assert normal and quirky and len(normal) + len(quirky) == len(datasets)
    for ds in normal:
        assert ds.pixel_array.dtype == np.int16 and float(ds.RescaleIntercept) == -1024
    assert all(d.Modality == "CT" and d.PhotometricInterpretation == "MONOCHROME2" for d in datasets)
    multi = [d for d in datasets if isinstance(d.WindowCenter, pydicom.multival.MultiValue)]
    assert 0 < len(multi) < len(datasets)
    # the quirky files read back to the same HU range as normal ones once repaired
    for ds_list in (normal, quirky):
        path = Path(ds_list[0].filename)
        hu = read_ct(path).hu
        assert hu.min() == pytest.approx(-1000, abs=40) and 900 < hu.max() < 1600


def test_generation_is_deterministic(tmp_path: Path) -> None:
    config = SyntheticConfig(n_images=6, image_size=48)
    synthetic.generate(config, tmp_path / "a")
    synthetic.generate(config, tmp_path / "b")
    synthetic.generate(SyntheticConfig(n_images=6, image_size=48, seed=7), tmp_path / "c")
    names = sorted(p.name for p in (tmp_path / "a" / rsna.IMAGE_DIR).iterdir())
    for name in names:
        assert (tmp_path / "a" / rsna.IMAGE_DIR / name).read_bytes() == (tmp_path / "b" / rsna.IMAGE_DIR / name).read_bytes()
    assert (tmp_path / "a" / rsna.LABEL_FILE).read_bytes() == (tmp_path / "b" / rsna.LABEL_FILE).read_bytes()
    assert names != sorted(p.name for p in (tmp_path / "c" / rsna.IMAGE_DIR).iterdir())


@pytest.mark.parametrize("subtype", rsna.CLASSES)
def test_hemorrhages_are_drawn_where_they_occur(subtype: str) -> None:
    for trial in range(5):
        rng = numpy_rng(11, subtype, trial)
        hu, head = synthetic.draw_head(128, rng)
        before = hu.copy()
        synthetic.DRAW[subtype](hu, head, rng)
        blood = (hu != before) & (hu >= 50)
        assert blood.sum() >= 8, f"{subtype}: lesion too small to see"
        assert head.brain[blood].all(), f"{subtype}: blood outside the brain"
        r = head.r[blood]
        if subtype in ("epidural", "subdural"):
            assert r.min() > 0.75, f"{subtype} must hug the inner skull"
        elif subtype == "intraventricular":
            assert np.logical_or.reduce(head.ventricles)[blood].all()
        elif subtype == "subarachnoid":
            assert (head.rim | head.sulci | head.fissure)[blood].all()
        elif subtype == "intraparenchymal":
            assert r.max() < 0.95


def test_epidural_is_thicker_and_shorter_than_subdural() -> None:
    thickness = {}
    for subtype in ("epidural", "subdural"):
        depths, spans = [], []
        for trial in range(20):
            rng = numpy_rng(3, subtype, trial)
            hu, head = synthetic.draw_head(128, rng)
            before = hu.copy()
            synthetic.DRAW[subtype](hu, head, rng)
            blood = hu != before
            depths.append((1 - head.r[blood]).max())
            spans.append(np.ptp(np.unwrap(np.sort(head.theta[blood]))))
        thickness[subtype] = (np.mean(depths), np.mean(spans))
    assert thickness["epidural"][0] > 1.5 * thickness["subdural"][0]
    assert thickness["epidural"][1] < thickness["subdural"][1]


def test_unknown_prevalence_key_is_named(tmp_path: Path) -> None:
    from fedmlp.errors import FedmlpError

    with pytest.raises(FedmlpError, match=r"synthetic\.prevalence\.chronic"):
        synthetic.generate(SyntheticConfig(n_images=3, prevalence={"chronic": 0.1}), tmp_path)
