"""Augmentation of whole batches as tensors, on the training device (no per-sample Python).

Policies by name (:data:`POLICIES`):

- ``none``: the images as floats in [0, 1];
- ``weak``: one random affine matrix per image (rotation, isotropic scale, translation, horizontal
  flip, from ``train.augment``) and one ``grid_sample`` call for the batch;
- ``strong``: FixMatch's strong view as batch operations: the weak affine with shear added, then two
  RandAugment-style operations per image drawn from a pool of photometric and geometric ones at a
  random magnitude, then a Cutout square of up to half the image side (scaled to the image, not
  FixMatch's 16 px for 32-px CIFAR images).
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


def _affine(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator, shear_max: float = 0.0) -> torch.Tensor:
    batch = x.shape[0]
    angle = _uniform(batch, -1, 1, generator) * math.radians(config.rotation_deg)
    scale = _uniform(batch, config.scale_min, config.scale_max, generator)
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0) if config.hflip else torch.ones(batch)
    shift = torch.stack([_uniform(batch, -1, 1, generator), _uniform(batch, -1, 1, generator)], dim=1) * 2 * config.translate
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    if shear_max > 0:  # drawn only for the strong policy, so the weak stream stays as it was
        shear = torch.eye(3).repeat(batch, 1, 1)
        shear[:, 0, 1] = _uniform(batch, -shear_max, shear_max, generator)
        shear[:, 1, 0] = _uniform(batch, -shear_max, shear_max, generator)
        theta = theta @ shear
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """The weak policy: augment a uint8 batch; returns float images in [0, 1]."""
    out = _affine(images.float() / 255.0, config, generator)
    return out.contiguous(memory_format=torch.channels_last)


# RandAugment-style photometric operations on float images in [0, 1], each (x, magnitude in [0, 1]) →
# x, applied per image through a mask (every op is computed for the batch, which is cheap next to
# the model, and keeps the batch one tensor).
def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(1, 2, 3), keepdim=True)


PHOTOMETRIC: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "identity": lambda x, m: x,
    "brightness": lambda x, m: x * (1 + 0.9 * m * _sign(m)),
    "contrast": lambda x, m: (x - _mean(x)) * (1 + 0.9 * m * _sign(m)) + _mean(x),
    "solarize": lambda x, m: torch.where(x >= 1 - m, 1 - x, x),
    "posterize": lambda x, m: torch.floor(x * 2 ** (8 - torch.round(4 * m))) / 2 ** (8 - torch.round(4 * m)),
    "autocontrast": lambda x, m: (x - x.amin(dim=(1, 2, 3), keepdim=True))
    / (x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True)).clamp(min=1e-3),
    "sharpness": lambda x, m: x + m * (x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)),
}


def _sign(m: torch.Tensor) -> torch.Tensor:
    # A fixed sign per magnitude keeps the op deterministic given the stream; both directions occur
    # because magnitudes are drawn on both sides of 0.5.
    return torch.where(m >= 0.5, 1.0, -1.0).to(m)


def random_augment(x: torch.Tensor, generator: torch.Generator, n_ops: int = 2) -> torch.Tensor:
    """``n_ops`` photometric operations per image, each chosen uniformly with a magnitude in [0.1, 1]."""
    batch = x.shape[0]
    names = list(PHOTOMETRIC)
    for _ in range(n_ops):
        choice = torch.randint(len(names), (batch,), generator=generator)
        magnitude = _uniform(batch, 0.1, 1.0, generator).to(x.device, x.dtype)[:, None, None, None]
        out = torch.empty_like(x)
        for index, name in enumerate(names):
            mask = (choice == index).to(x.device)[:, None, None, None]
            out = torch.where(mask, PHOTOMETRIC[name](x, magnitude), out)
        x = out.clamp(0, 1)
    return x


def cutout(x: torch.Tensor, generator: torch.Generator, max_fraction: float = 0.5) -> torch.Tensor:
    """One grey square per image, of side up to ``max_fraction`` of the image side, at a random centre."""
    batch, _, height, width = x.shape
    side = _uniform(batch, 0.0, max_fraction, generator) * min(height, width)
    cy, cx = _uniform(batch, 0, height, generator), _uniform(batch, 0, width, generator)
    ys = torch.arange(height, dtype=torch.float32)[None, :, None]
    xs = torch.arange(width, dtype=torch.float32)[None, None, :]
    inside = ((ys - cy[:, None, None]).abs() <= side[:, None, None] / 2) & ((xs - cx[:, None, None]).abs() <= side[:, None, None] / 2)
    return torch.where(inside[:, None].to(x.device), torch.full_like(x, 0.5), x)


def strong(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    x = _affine(images.float() / 255.0, config, generator, shear_max=0.3)
    x = cutout(random_augment(x, generator), generator)
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
