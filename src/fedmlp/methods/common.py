"""Pieces several methods share: positive weights and logit adjustment from observed labels, EMA
teachers, masked means, the pseudo-label matrix convention, binary sharpening, the distance between
two models, label counts and the prior pooled from them, and one scoring pass over a client's images.

Kept apart from any one method so that a method importing them does not depend on another method's
module (a method's jobs rerun when the modules it imports change; see fedmlp.fingerprint).
"""

from __future__ import annotations

import torch

from fedmlp.augment import to_float
from fedmlp.loader import ClientData, iterate_rows
from fedmlp.methods.messages import Weights
from fedmlp.models import Classifier
from fedmlp.runtime import Runtime
from fedmlp.store import ImageView

UNLABELLED = -1  # a pseudo-label matrix entry (int8) that holds no pseudo-label; 0 and 1 are labels


def positive_weights(observed: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """pos_weight per class from the client's observed labels: N / n⁺ for an annotated class with
    positives, 1 otherwise (a missing class has only zero targets; a class without positives)."""
    positives = observed.sum(0)
    weights = observed.shape[0] / positives.clamp(min=1)
    return torch.where(annotated & (positives > 0), weights, torch.ones_like(weights))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` is set (0 if none is)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def ema_alpha(step: int, decay: float, warm_start: bool = True) -> float:
    """The EMA's weight on the old teacher at its ``step`` (0 for the first update):
    min(1 − 1/(step + 1), decay) with the mean-teacher warm-start, else ``decay``."""
    return min(1 - 1 / (step + 1), decay) if warm_start else decay


@torch.no_grad()
def ema_update_(teacher: list[torch.Tensor], student: list[torch.Tensor], alpha: float) -> None:
    """teacher ← α · teacher + (1 − α) · student, in place (per tensor, t.mul_(α).add_(s, alpha=1 − α),
    as two multi-tensor calls: the same kernels and bits as the loop, at half its time per step)."""
    if not teacher:
        return
    torch._foreach_mul_(teacher, alpha)
    torch._foreach_add_(teacher, [s if s.dtype == t.dtype else s.to(t.dtype) for t, s in zip(teacher, student)], alpha=1 - alpha)


def ema_pairs(teacher: Classifier, student: Classifier, buffers: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The tensors an EMA step updates: the parameters, and with ``buffers`` the floating-point
    buffers too (BatchNorm's running statistics); integer buffers never. Views of the modules'
    tensors, valid while the modules keep them (loading a state dict copies into them): a local
    update builds them once (:func:`local_ema_pairs`), not at every step."""
    names = {name for name, _ in student.named_parameters()}
    t_state, s_state = teacher.state_dict(), student.state_dict()  # views of the modules' tensors
    keys = [k for k, v in s_state.items() if v.is_floating_point() and (buffers or k in names)]
    return [t_state[k] for k in keys], [s_state[k] for k in keys]


def class_prior(observed: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """π_kc = positives / N_k with Laplace smoothing ((pos + 1) / (N + 2)), which keeps it away
    from 0 and 1; 0.5 (no adjustment) for missing classes."""
    prior = (observed.sum(0) + 1) / (observed.shape[0] + 2)
    return torch.where(annotated, prior, torch.full_like(prior, 0.5))


def logit_offset(prior: torch.Tensor) -> torch.Tensor:
    """Added to the logits during training (logit adjustment): log(π / (1 − π))."""
    return torch.log(prior) - torch.log1p(-prior)


def local_ema_pairs(memo: dict, teacher: Classifier, student: Classifier, buffers: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """:func:`ema_pairs`, built on the first call of a local update and kept in its ``memo``
    (``LocalContext.memo``): building them walks both modules' state dicts, as long as the update."""
    key = ("ema_pairs", id(teacher), id(student), buffers)
    if key not in memo:
        memo[key] = ema_pairs(teacher, student, buffers)
    return memo[key]


def sharpen(p: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Binary temperature sharpening p^(1/T) / (p^(1/T) + (1 − p)^(1/T)), i.e. σ(logit(p) / T): fixes
    0, 1/2 and 1. Written with powers, not logits, so that its gradient stays finite where p rounds to
    0 or 1 (RSCFed, FedLSR)."""
    a = p ** (1 / temperature)
    return a / (a + (1 - p) ** (1 / temperature))


def model_distance(a: Weights, b: Weights, keys: list[str] | None = None) -> float:
    """Σ over ``keys`` (default: every floating tensor of ``a``) of ‖a − b‖₂, in float64 (RSCFed's
    distance to the sub-consensus, FedNoRo's between clients)."""
    keys = [k for k, v in a.items() if v.is_floating_point()] if keys is None else keys
    return float(sum(torch.linalg.vector_norm(a[k].double() - b[k].double()) for k in keys))


def label_counts(labels: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """(C, 2): per annotated class the number of samples labelled 0 and 1 (0 for a missing class)."""
    return (torch.stack([1 - labels, labels], dim=2) * annotated[None, :, None]).sum(0)


def global_prior(counts: list[torch.Tensor]) -> torch.Tensor:
    """π_c per class from the clients' label counts (C, 2) (negatives, positives; 0 where a client
    does not annotate c), pooled over the clients that annotate c, with the Laplace smoothing of
    :func:`class_prior`: (Σ positives + 1) / (Σ N_k + 2). A class nobody annotates gets 0.5 (no offset)."""
    total = torch.stack(counts).sum(0)  # (C, 2)
    return (total[:, 1] + 1) / (total.sum(1) + 2)


@torch.inference_mode()
def client_pass(model: Classifier, store: ImageView, client: ClientData, runtime: Runtime, batch_size: int = 256,
                offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over a client's images (eval mode, no augmentation): features and sigmoid outputs
    (of the logits plus ``offset`` (C,), if given), so that every score a method needs from the
    received model comes from one pass (FedMLP's prototypes, learning degrees and detection; FedNML's
    pseudo-labels)."""
    model.eval()
    features, probabilities = [], []
    for _, images in iterate_rows(store, client.rows, batch_size, runtime.device):
        with runtime.autocast():
            f = model.features(to_float(images))
            logits = model.head(f)
        features.append(f.float().cpu())
        logits = logits.float() if offset is None else logits.float() + offset.to(logits.device)
        probabilities.append(torch.sigmoid(logits).cpu())
    return torch.cat(features), torch.cat(probabilities)
