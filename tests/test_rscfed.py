"""RSCFed's pieces on hand-made inputs, and the method end to end on the small store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmlp import federated, runtime
from fedmlp.config import ModelConfig, TrainConfig
from fedmlp.methods import registry
from fedmlp.methods.rscfed import (
    dma_weights,
    draw_groups,
    group_size,
    model_distance,
    sharpen,
)
from fedmlp.store import ImageStore

TRAIN = TrainConfig(rounds=3, batch_size=8, precision="fp32", device="cpu")
MODEL = ModelConfig(width=4)


def test_dma_weights_follow_distances_and_sizes() -> None:
    sizes = torch.tensor([100.0, 100.0, 100.0])
    equal = dma_weights(torch.tensor([2.0, 2.0, 2.0]), sizes, scale=1e4)
    assert equal.tolist() == pytest.approx([1 / 3] * 3)
    # w_i ∝ (n_i / Σn) · exp(−β d_i / n_i): with β d / n = 0, 1, 2 the weights are ∝ 1, e⁻¹, e⁻²
    weights = dma_weights(torch.tensor([0.0, 0.01, 0.02]), sizes, scale=1e4)
    expected = torch.tensor([1.0, math.exp(-1), math.exp(-2)], dtype=torch.float64)
    assert torch.allclose(weights, expected / expected.sum())
    assert weights[0] > weights[1] > weights[2] and weights.sum().item() == pytest.approx(1.0)
    # equal distances, unequal sizes: the size term and the per-size distance both act
    sized = dma_weights(torch.zeros(2), torch.tensor([1.0, 3.0]), scale=1e4)
    assert sized.tolist() == pytest.approx([0.25, 0.75])


def test_dma_weights_do_not_underflow() -> None:
    """exp(−β d / n) is 0 in float64 for every client when β d / n > ~745; the normalised weights
    must still be finite, sum to 1 and favour the closest client."""
    distances, sizes = torch.tensor([5.0, 6.0, 9.0]), torch.tensor([20.0, 20.0, 20.0])
    assert (torch.exp(-1e4 * distances.double() / sizes) == 0).all()  # the plain formula: all zero
    weights = dma_weights(distances, sizes, scale=1e4)
    assert torch.isfinite(weights).all() and weights.sum().item() == pytest.approx(1.0)
    assert weights.argmax().item() == 0 and weights[0].item() == pytest.approx(1.0)


def test_model_distance_sums_l2_norms_over_keys() -> None:
    a = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([1.0])}
    reference = {"w": torch.zeros(2, dtype=torch.float64), "b": torch.tensor([-1.0], dtype=torch.float64)}
    assert model_distance(a, reference, ["w", "b"]) == pytest.approx(5.0 + 2.0)
    assert model_distance(a, reference, ["w"]) == pytest.approx(5.0)


def test_groups_are_drawn_from_the_generator_with_size_k() -> None:
    assert group_size(8, 6, 0.75) == 6 and group_size(5, 6, 0.75) == 4 and group_size(3, 6, 0.75) == 3
    assert group_size(5, 6, 1.0) == 5 and group_size(1, 6, 0.75) == 1  # official-code: min(6, N)

    def draw(seed: int) -> list[list[int]]:
        return draw_groups(8, 10, 6, torch.Generator().manual_seed(seed))

    groups = draw(0)
    assert len(groups) == 10 and all(len(g) == 6 == len(set(g)) and all(0 <= i < 8 for i in g) for g in groups)
    assert all(g == sorted(g) for g in groups)
    assert draw(0) == groups and draw(1) != groups  # a function of the generator's state only
    assert len({tuple(g) for g in groups}) > 1  # groups differ within a round


def test_sharpening_formula() -> None:
    p = torch.tensor([0.5, 0.8, 0.2, 0.99])
    sharp = sharpen(p, 0.5)
    assert sharp.tolist() == pytest.approx([0.5, 0.64 / (0.64 + 0.04), 0.04 / (0.04 + 0.64), 0.99**2 / (0.99**2 + 0.01**2)])
    assert torch.allclose(sharp, torch.sigmoid(torch.logit(p) / 0.5))  # σ(logit(p) / T)
    assert torch.allclose(sharpen(p, 1.0), p)


@pytest.mark.parametrize("variant", ["clean", "official-code"])
def test_trains_end_to_end(store: ImageStore, federation: dict, variant: str) -> None:
    rt = runtime.resolve("cpu", "fp32", 1)
    method = registry.create("rscfed", {"variant": variant, "groups": 4, "dist_scale": 1.0e4})  # RSCFed's own β (clean)
    result = federated.run(store, federation, method, TRAIN, MODEL, 0, rt)
    assert [r.round for r in result.history] == [1, 2, 3]
    assert all(np.isfinite(r.train_loss) for r in result.history) and np.isfinite(result.history[-1].test_mAP)
    assert all(torch.isfinite(v.float()).all() for v in result.model.state_dict().values())
    n_clients = len(federation["clients"])
    # K = min(6, ceil(0.75 · 3)) = 3
    assert len(method.server.groups) == 4 and all(len(g) == n_clients for g in method.server.groups)
    weights = torch.tensor(method.server.dma_weights)
    assert torch.isfinite(weights).all() and torch.allclose(weights.sum(1), torch.ones(4, dtype=weights.dtype))
    # the gate log: each round, each group's largest DMA weight (the last round's are the server state's)
    assert [(g["round"], g["side"], g["unit"], g["gate"]) for g in result.gates] == [
        (r, "server", u, "dma_max_weight") for r in (1, 2, 3) for u in range(4)]
    assert [g["rate"] for g in result.gates if g["round"] == 3] == [max(w) for w in method.server.dma_weights]
    assert all(1 / n_clients - 1e-9 <= g["rate"] <= 1 for g in result.gates)
    if variant == "clean":  # β = 1e4 on these small clients: far from uniform
        assert (weights.max(1).values - weights.min(1).values > 0.1).all()
    else:  # β = 0.01: practically the size-weighted mean
        sizes = torch.tensor([len(c["images"]) for c in federation["clients"]], dtype=weights.dtype)
        assert torch.allclose(weights, (sizes / sizes.sum()).expand_as(weights), atol=1e-3)
