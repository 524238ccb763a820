"""Read a CT DICOM file into Hounsfield units, repairing the RSNA signed-as-unsigned subset."""

from __future__ import annotations

import math
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


MAX_PIXELS = 2**26  # 8192 × 8192: a CT slice has 512 × 512; a few hundred KB of compressed data can ask for gigabytes
MIN_SIDE = 16  # smaller is not an image to learn from (and would be stretched into a blur)


def _first(value: object, path: Path, name: str) -> float | None:
    """The (first) value of a numeric header field, which must be a finite number."""
    if isinstance(value, (MultiValue, list, tuple)):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FedmlpError(f"{path}: {name} {str(value)!r} is not a number") from None
    if not math.isfinite(number):
        raise FedmlpError(f"{path}: {name} {str(value)!r} is not a finite number")
    return number


def _check_dimensions(ds: pydicom.Dataset, path: Path) -> None:
    """From the header, before any pixel is decoded: one frame of a sensible size."""
    try:
        rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise FedmlpError(f"{path}: unreadable image size in the header ({one_line(exc)})") from None
    if frames != 1:
        raise FedmlpError(f"{path}: {frames} frames, expected a single 2-D slice")
    if rows * columns > MAX_PIXELS:
        raise FedmlpError(f"{path}: {rows} × {columns} px is more than the {MAX_PIXELS:,} pixels a slice may have; not decoded")
    if min(rows, columns) < MIN_SIDE:
        raise FedmlpError(f"{path}: {rows} × {columns} px is smaller than {MIN_SIDE} × {MIN_SIDE}; not a usable slice")


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
    _check_dimensions(ds, path)
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
    slope = _first(ds.get("RescaleSlope"), path, "RescaleSlope")
    slope = 1.0 if slope is None else slope
    intercept = _first(ds.get("RescaleIntercept"), path, "RescaleIntercept") or 0.0
    center, width = _first(ds.get("WindowCenter"), path, "WindowCenter"), _first(ds.get("WindowWidth"), path, "WindowWidth")
    try:
        repaired = needs_signed_fix(ds)
    except (TypeError, ValueError) as exc:
        raise FedmlpError(f"{path}: unreadable BitsStored/PixelRepresentation ({one_line(exc)})") from None
    pixels = raw
    if repaired:
        pixels, intercept = repair_signed_as_unsigned(raw)
    with np.errstate(over="ignore", invalid="ignore"):
        hu = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if not np.isfinite(hu).all():
        raise FedmlpError(f"{path}: pixel values are not finite after rescaling (RescaleSlope {slope:g}, RescaleIntercept {intercept:g})")
    return CtSlice(
        hu=hu,
        window_center=center,
        window_width=width,
        monochrome1=str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1",
        repaired=repaired,
        modality=modality,
    )
