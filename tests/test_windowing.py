"""Windowing and DICOM decoding on real files from pydicom and pydicom-data, against hand-checked values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from fedmlp.cli import main
from fedmlp.dicom import read_ct, repair_signed_as_unsigned
from fedmlp.errors import FedmlpError
from fedmlp.windowing import to_uint8, window

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))  # pydicom: real CT, 128×128, no window tags
HEAD_CT = Path(get_testdata_file("693_UNCR.dcm"))  # pydicom-data: real axial head CT, 512×512, window 40/100
CHEST_CR = Path(get_testdata_file("RG1_UNCR.dcm"))  # pydicom-data: real PA chest radiograph, MONOCHROME1


def test_bsb_on_ct_small_matches_hand_computed_values() -> None:
    ct = read_ct(CT_SMALL)
    image = to_uint8(window(ct, "bsb"))
    assert image.shape == (3, 128, 128)
    # pixel (100, 40): raw 1083, intercept -1024 → 59 HU.
    # brain [0, 80]: 59/80·255 = 188.06; subdural [-20, 180]: 79/200·255 = 100.7; soft tissue [-150, 230]: 209/380·255 = 140.25
    assert image[:, 100, 40].tolist() == [188, 101, 140]
    assert image[:, 64, 64].tolist() == [255, 255, 255]  # 904 HU: bone, above every window
    assert image[:, 10, 10].tolist() == [0, 0, 0]  # -800 HU: below every window


def test_header_windowing_on_real_head_ct() -> None:
    ct = read_ct(HEAD_CT)
    assert (ct.window_center, ct.window_width) == (40.0, 100.0)
    image = to_uint8(window(ct, "header"))
    assert image.shape == (1, 512, 512)
    # clip to [-10, 90] (the image reaches both bounds), then (HU + 10)/100·255
    assert image[0, 256, 256] == 87  # 24 HU → 86.7
    assert image[0, 400, 300] == 130  # 41 HU → 130.05
    assert image[0, 100, 256] == 0  # -40 HU, below the window
    assert image[0, 256, 60] == 255  # 249 HU, above it


def test_header_windowing_needs_window_tags() -> None:
    with pytest.raises(FedmlpError, match="CT_small.dcm.*WindowCenter"):
        window(read_ct(CT_SMALL), "header", str(CT_SMALL))


def test_monochrome1_is_inverted() -> None:
    ct = read_ct(CHEST_CR)
    assert ct.monochrome1
    image = window(ct, "header")[0]
    darkest_raw = np.unravel_index(np.argmin(ct.hu), ct.hu.shape)
    assert image[darkest_raw] == pytest.approx(255.0)


def test_signed_as_unsigned_repair_on_constructed_values() -> None:
    hu = np.array([-1000, -500, -1, 0, 40, 80, 3000], dtype=np.int32)
    stored = np.mod(hu, 4096).astype(np.uint16)  # how the broken RSNA files hold them
    pixels, intercept = repair_signed_as_unsigned(stored)
    assert intercept == -1000
    np.testing.assert_array_equal(pixels + intercept, hu)


def test_signed_as_unsigned_file_reads_like_the_original(tmp_path: Path) -> None:
    ds = pydicom.dcmread(HEAD_CT)
    original = read_ct(HEAD_CT).hu
    expected = np.clip(original, -1000, 3095)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = 12, 11, 0, 0
    ds.PixelData = np.mod(expected.astype(np.int32), 4096).astype(np.uint16).tobytes()
    path = tmp_path / "broken.dcm"
    ds.save_as(path)
    repaired = read_ct(path)
    assert repaired.repaired
    np.testing.assert_array_equal(repaired.hu, expected)


def test_dicom2png_command(tmp_path: Path) -> None:
    assert main(["dicom2png", "--windowing", "bsb", str(CT_SMALL), str(tmp_path / "bsb.png")]) == 0
    assert main(["dicom2png", "--windowing", "header", "--size", "224", str(HEAD_CT), str(tmp_path / "header.png")]) == 0
    with Image.open(tmp_path / "bsb.png") as rgb:
        assert (rgb.mode, rgb.size) == ("RGB", (128, 128))
        assert rgb.getpixel((40, 100)) == (188, 101, 140)
    with Image.open(tmp_path / "header.png") as gray:
        assert (gray.mode, gray.size) == ("L", (224, 224))


def test_dicom2png_bad_input_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "not_a_dicom.dcm"
    bad.write_text("hello")
    assert main(["dicom2png", "--windowing", "bsb", str(bad), str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not_a_dicom.dcm" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.png").exists()
