"""HU → uint8 display images, in the two modes the field uses (docs/data.md).

``header``: the window from the file's own header, clipped to [c - w//2, c + w//2] and min–max scaled
per image (what the paper's preprocessing did); one channel.
``bsb``: brain (40, 80), subdural (80, 200) and soft-tissue (40, 380) windows as R, G, B, each scaled
by its own window bounds.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

from fedmlp.dicom import CtSlice
from fedmlp.errors import FedmlpError

Windowing = Literal["header", "bsb"]
BSB_WINDOWS = ((40.0, 80.0), (80.0, 200.0), (40.0, 380.0))


def channels(mode: Windowing) -> int:
    return 3 if mode == "bsb" else 1


def header_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Clip to the header window, then min–max scale this image to [0, 255] (float32)."""
    half = int(width) // 2
    clipped = np.clip(hu, center - half, center + half)
    low, high = float(clipped.min()), float(clipped.max())
    if high <= low:
        return np.zeros_like(clipped, dtype=np.float32)
    return ((clipped - low) / (high - low) * 255.0).astype(np.float32)


def fixed_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """Clip to [c - w//2, c + w//2] and scale those bounds to [0, 255] (float32)."""
    low = center - int(width) // 2
    high = center + int(width) // 2
    return ((np.clip(hu, low, high) - low) / (high - low) * 255.0).astype(np.float32)


def window(ct: CtSlice, mode: Windowing, source: str = "") -> np.ndarray:
    """Return a float32 image of shape (C, H, W) with values in [0, 255]."""
    if mode == "header":
        if ct.window_center is None or ct.window_width is None:
            raise FedmlpError(f"{source}: no WindowCenter/WindowWidth in the header (windowing 'header' needs them)")
        if ct.window_width <= 0:
            raise FedmlpError(f"{source}: WindowWidth {ct.window_width} is not positive")
        image = header_window(ct.hu, ct.window_center, ct.window_width)[None]
    elif mode == "bsb":
        image = np.stack([fixed_window(ct.hu, c, w) for c, w in BSB_WINDOWS])
    else:
        raise FedmlpError(f"windowing {mode!r} is not one of header, bsb")
    if ct.monochrome1:
        image = 255.0 - image
    return image


def resize(image: np.ndarray, size: int | None) -> np.ndarray:
    """Antialiased resize of a (C, H, W) float image to (C, size, size); ``None`` keeps the size."""
    if size is None or image.shape[1:] == (size, size):
        return image
    planes = [np.asarray(Image.fromarray(plane).resize((size, size), Image.Resampling.BILINEAR)) for plane in image]
    return np.stack(planes)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def to_pil(image: np.ndarray) -> Image.Image:
    """A (C, H, W) uint8 image as PIL: grayscale for one channel, RGB for three."""
    if image.shape[0] == 1:
        return Image.fromarray(image[0])
    return Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
