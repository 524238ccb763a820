"""Read a CT DICOM file into Hounsfield units, repairing the RSNA signed-as-unsigned subset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from fedmlp.errors import FedmlpError


@dataclass(frozen=True)
class CtSlice:
    hu: np.ndarray  # float32, Hounsfield units
    window_center: float | None  # first value of the header's WindowCenter, if any
    window_width: float | None
    monochrome1: bool  # display is inverted: high values dark
    repaired: bool  # the signed-as-unsigned fix was applied


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


def read_ct(path: Path) -> CtSlice:
    """Decode ``path`` to HU. Raises FedmlpError with the file named if it cannot be used."""
    try:
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken files
        raise FedmlpError(f"{path}: unreadable DICOM ({type(exc).__name__}: {exc})") from None
    if raw.ndim != 2:
        raise FedmlpError(f"{path}: expected a single 2-D slice, pixel array has shape {raw.shape}")
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
    )
