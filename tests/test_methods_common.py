"""The pieces several methods share (fedmlp.methods.common), on hand-made inputs."""

from __future__ import annotations

import torch

from fedmlp.config import ModelConfig
from fedmlp.methods.common import ema_alpha, ema_pairs, ema_update_, local_ema_pairs, positive_weights
from fedmlp.models import build_model

MODEL = ModelConfig(width=4)


def test_positive_weights_use_observed_annotated_labels_only() -> None:
    observed = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    weights = positive_weights(observed, torch.tensor([True, True, False]))
    assert weights.tolist() == [2.0, 1.0, 1.0]  # N / n⁺; annotated without a positive: 1; missing: 1


def test_ema_update_with_warm_start() -> None:
    assert ema_alpha(0, 0.999, warm_start=True) == 0.0  # the first update copies the student
    assert ema_alpha(1, 0.999, warm_start=True) == 0.5
    assert ema_alpha(3, 0.999, warm_start=True) == 0.75
    assert ema_alpha(10_000, 0.999, warm_start=True) == 0.999
    assert ema_alpha(0, 0.999, warm_start=False) == 0.999
    teacher, student = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 6.0])]
    ema_update_(teacher, student, ema_alpha(1, 0.999, warm_start=True))
    assert teacher[0].tolist() == [2.0, 4.0]  # 0.5 · teacher + 0.5 · student
    ema_update_(teacher, student, 0.75)
    assert teacher[0].tolist() == [2.25, 4.5]
    ema_update_(teacher, student, 0.0)
    assert teacher[0].tolist() == [3.0, 6.0]


def test_ema_pairs_cover_parameters_and_running_statistics() -> None:
    teacher, student = build_model(MODEL, 3), build_model(MODEL, 3)
    t_all, s_all = ema_pairs(teacher, student, buffers=True)
    t_params, _ = ema_pairs(teacher, student, buffers=False)
    n_params = len(list(student.parameters()))
    assert len(t_params) == n_params and len(t_all) > n_params and len(t_all) == len(s_all)
    assert all(t.is_floating_point() for t in t_all)
    ema_update_(t_all, s_all, 0.0)  # the views write through to the teacher's modules
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), student.state_dict().values()))


def test_ema_update_is_bit_identical_to_the_per_tensor_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    teacher = [torch.rand(3, 4, generator=generator), torch.rand(7, generator=generator)]
    student = [torch.rand(3, 4, generator=generator), torch.rand(7, generator=generator, dtype=torch.float64)]
    expected = [t.clone().mul_(0.993).add_(s.to(t.dtype), alpha=1 - 0.993) for t, s in zip(teacher, student)]
    ema_update_(teacher, student, 0.993)
    assert all(torch.equal(t, e) for t, e in zip(teacher, expected))


def test_local_ema_pairs_are_built_once_per_update() -> None:
    teacher, student = build_model(MODEL, 3), build_model(MODEL, 3)
    memo: dict = {}
    first = local_ema_pairs(memo, teacher, student, buffers=True)
    assert local_ema_pairs(memo, teacher, student, buffers=True) is first
    assert [len(x) for x in first] == [len(x) for x in ema_pairs(teacher, student, buffers=True)]
