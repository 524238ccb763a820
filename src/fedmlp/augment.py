"""Augmentation of whole batches as tensors, on the training device (no per-sample Python).

One random affine matrix per image (rotation, isotropic scale, translation, horizontal flip) and one
``grid_sample`` call for the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fedmlp.config import AugmentConfig


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float in [0, 1], channels-last for faster convolutions."""
    return (images.float() / 255.0).contiguous(memory_format=torch.channels_last)


def random_affine(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a uint8 batch; returns float images in [0, 1]."""
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    angle = uniform(-1, 1) * math.radians(config.rotation_deg)
    scale = uniform(config.scale_min, config.scale_max)
    flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0) if config.hflip else torch.ones(batch)
    shift = torch.stack([uniform(-1, 1), uniform(-1, 1)], dim=1) * 2 * config.translate
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    theta = theta.to(images.device)
    x = images.float() / 255.0
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)
