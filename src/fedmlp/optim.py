"""Adam as ``torch.optim.Adam(fused=True)`` runs it, without ``torch.optim``'s Optimizer class.

The Optimizer class imports ``torch._dynamo`` the first time a parameter group is added or a step is
taken (its ``_disable_dynamo`` wrappers), and with it triton, sympy and the compiler stack: about
1.5 CPU-seconds per process, a seventh of a short training job's CPU time, for nothing an eager
training loop uses. :class:`FusedAdam` calls the same kernel (``torch._fused_adam_``) with the same
state (a float32 step counter per parameter, created on the parameter's first gradient; the moments
as zeros like the parameter) and the same arguments, so training with it is bit-identical to
training with ``torch.optim.Adam(params, lr, weight_decay=..., fused=True)`` (tests/test_optim.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class FusedAdam:
    """One parameter group of Adam (no AMSGrad, no maximize, no gradient scaling), fused kernel."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.weight_decay, self.betas, self.eps = float(lr), float(weight_decay), betas, float(eps)
        self.state: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # step, exp_avg, exp_avg_sq

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        groups: dict[tuple[torch.device, torch.dtype], tuple[list[torch.Tensor], ...]] = {}
        for p in self.params:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("FusedAdam does not support sparse gradients")
            if p not in self.state:
                self.state[p] = (torch.zeros((), dtype=torch.float32, device=p.device),
                                 torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros_like(p, memory_format=torch.preserve_format))
            step, exp_avg, exp_avg_sq = self.state[p]
            lists = groups.setdefault((p.device, p.dtype), ([], [], [], [], []))
            for target, tensor in zip(lists, (p, p.grad, exp_avg, exp_avg_sq, step)):
                target.append(tensor)
        for params, grads, exp_avgs, exp_avg_sqs, steps in groups.values():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=self.lr,
                               beta1=self.betas[0], beta2=self.betas[1], weight_decay=self.weight_decay, eps=self.eps,
                               maximize=False, grad_scale=None, found_inf=None)


def adam(params: Iterable[torch.Tensor], lr: float, weight_decay: float = 0.0) -> FusedAdam | torch.optim.Adam:
    """The training loop's optimizer: :class:`FusedAdam`, or ``torch.optim.Adam(fused=True)`` (the
    same arithmetic, the slower start-up) on a torch without the private ``_fused_adam_`` op, which
    this class depends on and torch may rename."""
    if hasattr(torch, "_fused_adam_"):
        return FusedAdam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
