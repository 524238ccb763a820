"""fedmlp.optim.FusedAdam against torch.optim.Adam(fused=True): the same bits, without torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import torch

from fedmlp.config import ModelConfig
from fedmlp.models import build_model
from fedmlp.optim import FusedAdam


def train(make_optimizer, steps: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8), 5).to(memory_format=torch.channels_last).train()
    model.head.bias.requires_grad_(False)  # a parameter without a gradient is skipped, as torch's Adam does
    optimizer = make_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        images = torch.rand(8, 1, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)
        targets = (torch.rand(8, 5, generator=generator) < 0.3).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_bit_identical_to_torch_fused_adam():
    ours = train(lambda p: FusedAdam(p, lr=3e-3, weight_decay=1e-4))
    theirs = train(lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-4, fused=True))
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_a_local_update_does_not_import_dynamo():
    code = ("import sys, torch\n"
            "from fedmlp.optim import FusedAdam\n"
            "p = torch.nn.Parameter(torch.ones(3))\n"
            "o = FusedAdam([p], lr=0.1)\n"
            "(p * p).sum().backward(); o.step(); o.zero_grad()\n"
            "assert 'torch._dynamo' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_adam_falls_back_to_torch_where_the_private_op_is_missing(monkeypatch) -> None:
    from fedmlp import optim

    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(optim.adam(params, lr=0.1), FusedAdam)
    monkeypatch.delattr(torch, "_fused_adam_")
    assert isinstance(optim.adam(params, lr=0.1), torch.optim.Adam)
