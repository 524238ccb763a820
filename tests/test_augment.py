"""The strong augmentation policy (FixMatch's RandAugment + Cutout as batch operations)."""

from __future__ import annotations

import math

import pytest
import torch

from fedmlp.augment import (
    IDENTITY,
    OPERATIONS,
    PHOTOMETRIC,
    augment,
    cutout,
    draw_operations,
    geometric_matrix,
    random_affine,
    strong,
)
from fedmlp.config import AugmentConfig

CONFIG = AugmentConfig()


def images(n: int = 8, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_is_seeded_float_in_range_and_channels_last(channels: int) -> None:
    x = images(channels=channels)
    a, b = augment(x, "strong", CONFIG, generator(1)), augment(x, "strong", CONFIG, generator(1))
    c = augment(x, "strong", CONFIG, generator(2))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert 0 <= a.min() and a.max() <= 1
    assert a.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_strong_differs_from_weak_and_is_built_on_it() -> None:
    x = images()
    weak = augment(x, "weak", CONFIG, generator(3))
    assert not torch.equal(augment(x, "strong", CONFIG, generator(3)), weak)
    # without RandAugment and with an empty Cutout, the strong view is the weak view, bit for bit
    assert torch.equal(strong(x, CONFIG, generator(3), n_ops=0, cutout_fraction=0.0), weak)
    assert torch.equal(random_affine(x, CONFIG, generator(3)), weak)


def test_strong_is_float32_under_autocast() -> None:
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = augment(images(), "strong", CONFIG, generator(0))
    assert out.dtype == torch.float32


def covered(x: torch.Tensor) -> torch.Tensor:
    """Share of each image's pixels painted grey by cutout (on an all-zero batch)."""
    return (x == 0.5).all(dim=1).float().mean(dim=(1, 2))


def test_cutout_area_scales_with_the_image() -> None:
    small, large = torch.zeros(400, 1, 32, 32), torch.zeros(400, 1, 128, 128)
    share_small, share_large = covered(cutout(small, generator(5))), covered(cutout(large, generator(5)))
    # the same draws give the same relative square: the covered share does not depend on the size
    assert share_small.mean().item() == pytest.approx(share_large.mean().item(), rel=0.05)
    assert 0.02 < share_large.mean().item() < 0.25 and share_large.max().item() <= 0.25 + 1e-6  # side < half
    # the published code's fixed 16 px square covers 16 × 16 pixels whatever the size, unless cut by the border
    fixed = (cutout(large, generator(5), pixels=16) == 0.5).all(dim=1).sum(dim=(1, 2))
    assert fixed.max().item() == 256 and (fixed <= 256).all() and (fixed > 0).all()
    assert covered(cutout(large, generator(5), pixels=16)).mean().item() < share_large.mean().item() / 4


def test_strong_cutout_fraction_and_fixed_pixels() -> None:
    x = torch.zeros(64, 3, 64, 64, dtype=torch.uint8)  # black, and no RandAugment: only Cutout paints 0.5
    none = strong(x, CONFIG, generator(1), n_ops=0, cutout_fraction=0.0)
    assert not (none == 0.5).any()
    fixed = (strong(x, CONFIG, generator(1), n_ops=0, cutout_pixels=16) == 0.5).all(dim=1).sum(dim=(1, 2))
    assert fixed.max().item() == 256


def test_operation_draws_and_the_apply_probability() -> None:
    slots = draw_operations(1000, generator(0), n_ops=2, magnitude=10)
    assert len(slots) == 2
    for op, m, sign in slots:
        assert op.min() >= 0 and op.max() < len(OPERATIONS)
        assert 0.1 <= m.min() and m.max() < 1.0 and set(sign.tolist()) == {-1.0, 1.0}
        assert 0.4 < (op == IDENTITY).float().mean() < 0.6  # half not applied, plus identity drawn 1/13 of the time
    never = draw_operations(100, generator(0), apply_probability=0.0)
    assert all((op == IDENTITY).all() for op, _, _ in never)
    assert draw_operations(100, generator(0), magnitude=5)[0][1].max() < 0.5


def test_geometric_matrices() -> None:
    op = torch.tensor([OPERATIONS.index(n) for n in ("brightness", "rotate", "shear_x", "translate_y")])
    m, sign = torch.tensor([0.5, 1.0, 0.5, 0.5]), torch.tensor([1.0, 1.0, -1.0, 1.0])
    matrices = geometric_matrix(op, m, sign)
    assert torch.equal(matrices[0], torch.eye(3))  # photometric: no warp
    angle = math.radians(30)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    assert torch.allclose(matrices[1, :2, :2], rotation)
    assert matrices[2, 0, 1].item() == pytest.approx(-0.15) and matrices[2, 0, 0] == 1
    assert matrices[3, 1, 2].item() == pytest.approx(0.3)  # 0.15 of the side is 0.3 in [−1, 1] coordinates


def test_photometric_operations() -> None:
    x = torch.linspace(0.2, 0.6, 16).view(1, 1, 4, 4)
    one, plus = torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    stretched = PHOTOMETRIC["autocontrast"](x, one, plus)
    assert stretched.min().item() == pytest.approx(0.0) and stretched.max().item() == pytest.approx(1.0)
    equalised = PHOTOMETRIC["equalize"](x, one, plus)
    assert equalised.min().item() == 0.0 and equalised.max().item() == 1.0  # 16 distinct levels spread over [0, 1]
    assert (equalised.flatten().diff() > 0).all()
    solarised = PHOTOMETRIC["solarize"](x, 0.5 * one, plus)  # values ≥ 0.5 inverted
    assert torch.equal(solarised, torch.where(x >= 0.5, 1 - x, x))
    posterised = PHOTOMETRIC["posterize"](x, 0.1 * one, plus)  # 4 bits: multiples of 16 / 255
    assert torch.allclose(posterised * 255 / 16, torch.round(posterised * 255 / 16), atol=1e-4)
    assert torch.allclose(PHOTOMETRIC["brightness"](x, 0.5 * one, -plus), x * 0.55)
    flat = torch.full((1, 1, 4, 4), 0.3)
    for name, op in PHOTOMETRIC.items():
        if name not in ("solarize", "posterize", "brightness"):
            assert torch.allclose(op(flat, one, plus), flat), name  # a constant image has no contrast to change
