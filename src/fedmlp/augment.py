"""Augmentation of whole batches as tensors, on the training device (no per-sample Python).

Policies by name (:data:`POLICIES`):

- ``none``: the images as floats in [0, 1];
- ``weak``: one random affine matrix per image (rotation, isotropic scale, translation, horizontal
  flip, from ``train.augment``) and one ``grid_sample`` call for the batch;
- ``strong``: FixMatch's strong view as batch operations: RandAugment (two operations per image from
  FixMatch's pool, each applied with probability 1/2 at a random magnitude and direction) on top of
  the weak affine, then a Cutout square of side up to half the image side (scaled to the image, not
  FixMatch's 16 px for 32-px CIFAR images). The geometric draws (the weak affine, rotation, shear,
  translation) are composed into one warp, so the image is resampled once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from fedmlp.config import AugmentConfig


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float in [0, 1], channels-last for faster convolutions."""
    return (images.float() / 255.0).contiguous(memory_format=torch.channels_last)


def _uniform(batch: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(batch, generator=generator)


def _affine_theta(batch: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """The weak policy's random affine matrices (B, 2, 3), mapping output to input coordinates."""
    angle = _uniform(batch, -1, 1, generator) * math.radians(config.rotation_deg)
    scale = _uniform(batch, config.scale_min, config.scale_max, generator)
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0) if config.hflip else torch.ones(batch)
    shift = torch.stack([_uniform(batch, -1, 1, generator), _uniform(batch, -1, 1, generator)], dim=1) * 2 * config.translate
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """The weak policy: augment a uint8 batch; returns float images in [0, 1]."""
    x = images.float() / 255.0
    out = _warp(x, _affine_theta(x.shape[0], config, generator))
    return out.contiguous(memory_format=torch.channels_last)


# --- the strong policy -------------------------------------------------------------------------
# RandAugment as FixMatch's RandAugmentMC runs it: per image, ``n_ops`` operations drawn uniformly
# from the pool, each applied with probability 1/2 at a magnitude drawn uniformly in [0.1, m / 10)
# and a random direction. Photometric operations take float images in [0, 1] and per-image
# magnitudes and signs of shape (n, 1, 1, 1); each runs only on the images that drew it.

def _enhance(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance factor: 1 ± 0.9·m, i.e. in (0.1, 1.9) (1 leaves the image as it is)."""
    return 1 + 0.9 * m * s


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return degenerate + factor * (x - degenerate)


def _autocontrast(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Stretch each channel to [0, 1] (a constant channel stays as it is)."""
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp(min=1e-6), x)


def _equalize(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each channel over its 256 grey levels (by sorting: deterministic on a GPU)."""
    n, c, h, w = x.shape
    levels = torch.round(x * 255).reshape(n * c, h * w)
    ordered = levels.sort(dim=1).values
    below = torch.searchsorted(ordered, levels, right=True).to(x.dtype)  # pixels at or below each pixel's level
    lowest = torch.searchsorted(ordered, ordered[:, :1].contiguous(), right=True).to(x.dtype)  # pixels at the lowest level
    span = h * w - lowest
    out = torch.where(span > 0, (below - lowest) / span.clamp(min=1), x.reshape(n * c, h * w))  # a flat channel stays
    return out.reshape(n, c, h, w)


def _sharpness(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's smoothing filter (3×3, centre 5, others 1); the border pixels stay as they are."""
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=x.shape[1])
    return _blend(smooth, x, _enhance(m, s))


def _posterize(x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Keep the top 4 + ⌊4m⌋ bits (4 to 7) of each 8-bit value."""
    step = 2 ** (4 - torch.floor(4 * m))
    return torch.floor(torch.round(x * 255) / step) * step / 255


PHOTOMETRIC: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "brightness": lambda x, m, s: x * _enhance(m, s),
    "contrast": lambda x, m, s: _blend(x.mean(dim=(1, 2, 3), keepdim=True), x, _enhance(m, s)),
    "sharpness": _sharpness,
    "posterize": _posterize,
    "solarize": lambda x, m, s: torch.where(x >= 1 - m, 1 - x, x),  # invert the values above 1 − m
}
# Geometric operations, at most rotation 30°, shear 0.3 and translation 0.3 of the side (FixMatch's
# pool); they are folded into the one affine warp of the batch.
GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
OPERATIONS = ("identity", *PHOTOMETRIC, *GEOMETRIC)  # FixMatch's pool less Color (our channels are not RGB)
IDENTITY = OPERATIONS.index("identity")


def draw_operations(batch: int, generator: torch.Generator, n_ops: int = 2, magnitude: float = 10.0,
                    apply_probability: float = 0.5) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per slot: the operation index (identity where not applied), magnitude and sign of each image."""
    slots = []
    for _ in range(n_ops):
        op = torch.randint(len(OPERATIONS), (batch,), generator=generator)
        m = _uniform(batch, 0.1, magnitude / 10, generator)
        sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        applied = torch.rand(batch, generator=generator) < apply_probability
        slots.append((torch.where(applied, op, IDENTITY), m, sign))
    return slots


def geometric_matrix(op: torch.Tensor, m: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) output-to-input matrices of one slot's geometric operations (identity elsewhere), in
    grid_sample's coordinates, where the image spans [−1, 1]."""
    v = m * sign

    def amount(name: str, scale: float) -> torch.Tensor:
        return torch.where(op == OPERATIONS.index(name), scale * v, torch.zeros_like(v))

    angle = amount("rotate", math.radians(30))
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(v), torch.ones_like(v)
    rows = [torch.stack([cos, -sin + amount("shear_x", 0.3), amount("translate_x", 0.6)], 1),
            torch.stack([sin + amount("shear_y", 0.3), cos, amount("translate_y", 0.6)], 1),
            torch.stack([zero, zero, one], 1)]
    return torch.stack(rows, 1)


def random_augment(x: torch.Tensor, slots: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The photometric operations of ``slots``, in order, each on the images that drew it."""
    for op, m, sign in slots:
        for name, function in PHOTOMETRIC.items():
            chosen = torch.nonzero(op == OPERATIONS.index(name)).flatten()
            if len(chosen) == 0:
                continue
            index = chosen.to(x.device)
            shape = (len(chosen), 1, 1, 1)
            mi, si = m[chosen].view(shape).to(x.device, x.dtype), sign[chosen].view(shape).to(x.device, x.dtype)
            x[index] = function(x[index], mi, si).clamp(0, 1)  # x is this function's own tensor
    return x


def cutout(x: torch.Tensor, generator: torch.Generator, max_fraction: float = 0.5, pixels: int | None = None) -> torch.Tensor:
    """One grey square per image at a random centre (cut by the border): of side uniform in
    [0, ``max_fraction``) of the image side, or of ``pixels`` pixels if given (FixMatch's fixed 16 px)."""
    batch, _, height, width = x.shape
    if pixels is None:
        side = _uniform(batch, 0.0, max_fraction, generator) * min(height, width)
    else:
        side = torch.full((batch,), float(pixels))
    cy, cx = _uniform(batch, 0, height, generator), _uniform(batch, 0, width, generator)
    side, cy, cx = (t.to(x.device)[:, None] for t in (side, cy, cx))
    ys = torch.arange(height, device=x.device, dtype=torch.float32)[None, :]
    xs = torch.arange(width, device=x.device, dtype=torch.float32)[None, :]
    rows = (ys >= cy - side / 2) & (ys < cy + side / 2)  # half-open: exactly ``side`` pixels when whole
    cols = (xs >= cx - side / 2) & (xs < cx + side / 2)
    inside = rows[:, None, :, None] & cols[:, None, None, :]
    return torch.where(inside, torch.full_like(x, 0.5), x)


def strong(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator, *, n_ops: int = 2,
           magnitude: float = 10.0, cutout_fraction: float = 0.5, cutout_pixels: int | None = None) -> torch.Tensor:
    """The strong policy: the weak affine and RandAugment's geometric draws in one warp, then its
    photometric draws, then Cutout. Always in float32 (it may be called under autocast)."""
    with torch.autocast(device_type=images.device.type, enabled=False):
        x = images.float() / 255.0
        batch = x.shape[0]
        theta = torch.cat([_affine_theta(batch, config, generator), torch.tensor([[[0.0, 0.0, 1.0]]]).expand(batch, 1, 3)], 1)
        slots = draw_operations(batch, generator, n_ops, magnitude)
        for slot in slots:
            theta = theta @ geometric_matrix(*slot)
        x = random_augment(_warp(x, theta[:, :2]), slots)
        x = cutout(x, generator, cutout_fraction, cutout_pixels)
    return x.contiguous(memory_format=torch.channels_last)


POLICIES: dict[str, Callable[[torch.Tensor, AugmentConfig, torch.Generator], torch.Tensor]] = {
    "none": lambda images, config, generator: to_float(images),
    "weak": random_affine,
    "strong": strong,
}


def augment(images: torch.Tensor, policy: str, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    if policy not in POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r} (known: {', '.join(POLICIES)})")
    return POLICIES[policy](images, config, generator)
