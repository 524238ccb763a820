"""Read a CT DICOM file into Hounsfield units, repairing the RSNA signed-as-unsigned subset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder

from fedmlp.errors import FedmlpError, one_line


@dataclass(frozen=True)
class CtSlice:
    hu: np.ndarray  # float32, Hounsfield units
    window_center: float | None  # first value of the header's WindowCenter, if any
    window_width: float | None
    monochrome1: bool  # display is inverted: high values dark
    repaired: bool  # the signed-as-unsigned fix was applied
    modality: str | None = None  # the header's Modality ("CT" for head CT); ingest decides what it accepts


def _first(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def needs_signed_fix(ds: pydicom.Dataset) -> bool:
    """The RSNA subset that stores signed 12-bit data as unsigned with a near-zero intercept."""
    return (
        int(ds.get("BitsStored", 16)) == 12
        and int(ds.get("PixelRepresentation", 1)) == 0
        and float(ds.get("RescaleIntercept", -1024)) > -100
    )


def repair_signed_as_unsigned(raw: np.ndarray) -> tuple[np.ndarray, float]:
    """Shift raw values so that they read correctly with intercept -1000 (returns pixels, intercept)."""
    shifted = raw.astype(np.int32) + 1000
    shifted[shifted >= 4096] -= 4096
    return shifted, -1000.0


GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
DECODER_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm"


def _decode(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    """Header and pixels, with one clear reason when a file cannot give a grayscale slice."""
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise FedmlpError(f"{path}: not a DICOM file (no DICM prefix or file meta header)") from None
    except Exception as exc:  # pydicom raises many types for broken files
        raise FedmlpError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GRAYSCALE:
        raise FedmlpError(f"{path}: PhotometricInterpretation {photometric or '(missing)'!r} is not grayscale ({' or '.join(GRAYSCALE)})")
    syntax = getattr(ds, "file_meta", pydicom.Dataset()).get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed and not get_decoder(syntax).is_available:
        raise FedmlpError(f"{path}: pixel data is compressed ({syntax.name}) and no installed decoder reads it ({DECODER_HINT})")
    try:
        return ds, ds.pixel_array
    except Exception as exc:
        raise FedmlpError(f"{path}: unreadable pixel data ({type(exc).__name__}: {one_line(exc)})") from None


def read_ct(path: Path) -> CtSlice:
    """Decode ``path`` to HU. Raises FedmlpError with the file named if it cannot be used."""
    ds, raw = _decode(path)
    if raw.ndim != 2:
        raise FedmlpError(f"{path}: expected a single 2-D slice, pixel array has shape {raw.shape}")
    modality = str(ds["Modality"].value) if "Modality" in ds else None
    if modality == "CT" and not ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        # required in CT images (DICOM PS3.3 C.8.2.1): without them the values are not Hounsfield units
        raise FedmlpError(f"{path}: CT without RescaleSlope/RescaleIntercept; its pixel values cannot be converted to Hounsfield units")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    repaired = needs_signed_fix(ds)
    pixels = raw
    if repaired:
        pixels, intercept = repair_signed_as_unsigned(raw)
    hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return CtSlice(
        hu=hu,
        window_center=_first(ds.get("WindowCenter")),
        window_width=_first(ds.get("WindowWidth")),
        monochrome1=str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1",
        repaired=repaired,
        modality=modality,
    )
