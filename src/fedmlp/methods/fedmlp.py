"""FedMLP (Sun et al., MICCAI 2024) as docs/method.md describes it.

One method with a round schedule: rounds ``[0, T1)`` are stage 1 (warm-up), rounds ``[T1, train.rounds)``
stage 2 (pseudo-labels + global teacher). The Snakemake stages ``warmup``, ``pseudolabel`` and
``teacher`` run parts of this schedule; run whole (``fedmlp train --method fedmlp``), it gives the
same weights bit for bit.

A stage-2 round has two exchanges. Prepare: each client computes, with the received global model,
its local prototypes and learning degrees in one pass over its images and uploads them; the server
aggregates them into global prototypes and degrees and broadcasts those with the weights. Train:
each client detects pseudo-labels for its missing classes (with the features of its prepare pass)
and trains. With ``degree_scale: prior`` the first stage-2 round opens with a census: each client
uploads its label counts per annotated class, and the server's global class prior (kept from then
on) rides on every later broadcast, for the degrees' prior-adjusted probabilities.

Per client state (kept across rounds): the logit-adjustment offsets, the pseudo-label matrix
(-1 unlabelled, 0 or 1; only ever set on missing classes) and the learning degrees. Server state:
the global prototypes and learning degrees, and with ``degree_scale: prior`` the global class prior.
Gate rate (:func:`~fedmlp.methods.base.record_gate`) per stage-2 round: ``pseudo``, the share of a
client's missing entries that hold a pseudo-label after the round's detection.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from fedmlp.config import from_dict
from fedmlp.errors import FedmlpError
from fedmlp.loader import Batch, ClientData
from fedmlp.methods.base import LocalContext, ServerContext, StagedMethod, record_gate
from fedmlp.methods.common import UNLABELLED, class_prior, client_pass, global_prior, label_counts, logit_offset, masked_mean
from fedmlp.methods.messages import CENSUS, Entry, Upload
from fedmlp.methods.registry import register
from fedmlp.schema import setting
from fedmlp.store import ImageView


@dataclass(frozen=True)
class ThresholdConfig:
    """Bounds of the adaptive selection fraction, and the published code's fixed fraction per round."""

    min: float = setting(0.0, "Lower bound of the adaptive fraction.", minimum=0, maximum=1)
    max: float = setting(0.1, "Upper bound of the adaptive fraction.", minimum=0, maximum=1)
    fixed: float = setting(0.005, "Fraction per round with selection: fixed.", minimum=0, maximum=1)


@dataclass(frozen=True)
class FedMLPConfig:
    """FedMLP (docs/method.md). Methods fedmlp, fedmlp-fixed (selection fixed, accumulated) and
    fedmlp-official (variant official-code) share the warm-up."""

    warmup_rounds: int = setting(8, "Stage 1 rounds (T1); stage 2 runs the rest of train.rounds (T2 = train.rounds − T1).",
                                 minimum=1)
    lambda_dis: float = setting(1.0, "Weight of the stage-1 distillation to the frozen global model on missing classes.", minimum=0)
    lambda_cr: float = setting(1.0, "Weight of the stage-2 consistency to the global teacher on unlabelled missing entries.", minimum=0)
    logit_adjust: bool = setting(True, "Logit adjustment of the annotated-class BCE by the client's class prior.")
    selection: Literal["adaptive", "fixed"] = setting(
        "adaptive", "adaptive: fractions from the learning degrees; fixed: the published code's tau0.fixed / tau1.fixed.")
    accumulate: bool = setting(True, "true: each round adds to the pseudo-labels so far; false: re-detect from scratch each round.")
    variant: Literal["paper", "official-code"] = setting("paper", "official-code: the published code's stage 2 (see docs/method.md).")
    stage2_views: int = setting(2, "Augmented views per image in stage 2 (the warm-up always uses 2); 2 chosen on validation "
                                "(config/stage2-views.yaml, docs/method.md).",
                                minimum=1, maximum=2)
    confidence_low: float = setting(0.3, "L: a prediction below it counts as confident.", minimum=0, maximum=1)
    confidence_high: float = setting(0.7, "U: a prediction above it counts as confident.", minimum=0, maximum=1)
    degree_scale: Literal["raw", "prior"] = setting(
        "raw", "Probabilities the learning degrees count as confident: raw: σ(z); prior: σ(z + log(π_c/(1−π_c))), π_c the class's "
        "global prevalence over the clients that annotate it (a census; docs/method.md says why).")
    tau0: ThresholdConfig = setting(ThresholdConfig(min=0.0, max=0.05, fixed=0.005),
                                    "Share of negative candidates given pseudo-label 0 per detection.")
    tau1: ThresholdConfig = setting(ThresholdConfig(min=0.0, max=0.02, fixed=0.01),
                                    "Share of positive candidates given pseudo-label 1 per detection.")
    pseudo_weight: float = setting(
        1.0, "Weight of a pseudo-labelled entry in the stage-2 BCE relative to an annotated one (a weighted mean; 0: none).", minimum=0)
    oracle_pseudolabels: bool = setting(
        False, "DIAGNOSTICS ONLY, not a method: train the selected entries on their hidden true labels instead of their pseudo-labels.")

    # The keys the warm-up depends on, and the stage-2 keys the first detection does not depend on:
    # the workflow passes each stage only what it reads, so changing a later key reuses earlier stages.
    # (The detection is one pass of the warm-up model, no training: it reads no loss or view setting.)
    STAGE1_KEYS = ("warmup_rounds", "lambda_dis", "logit_adjust")
    NOT_DETECTION_KEYS = ("lambda_cr", "stage2_views", "pseudo_weight", "oracle_pseudolabels")
    # Keys that no longer exist, with what replaced them (a config that still sets one is refused in one line).
    REPLACED_KEYS = {"rounds": "replaced by train.rounds: stage 2 runs train.rounds − fedmlp.warmup_rounds rounds; remove the key"}
    ORDERED_KEYS = (("tau0.min", "tau0.max"), ("tau1.min", "tau1.max"), ("confidence_low", "confidence_high"))


log = logging.getLogger(__name__)

ORACLE_WARNING = ("fedmlp.oracle_pseudolabels is on: stage 2 trains the selected missing entries on their hidden TRUE labels "
                  "(a diagnostic upper bound of the pseudo-labels, not a method; its results must not be reported as FedMLP's)")


# ---------------------------------------------------------------------------------------------
# The method's pieces as pure functions (tested on hand-made inputs).


def prototypes(features: torch.Tensor, labels: torch.Tensor, annotated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per annotated class c and label j ∈ {0, 1}: the mean feature of samples labelled j.

    Returns (C, 2, D) prototypes (zero where undefined) and (C, 2) sample counts."""
    onehot = torch.stack([1 - labels, labels], dim=2) * annotated[None, :, None]  # (N, C, 2)
    counts = onehot.sum(0)
    sums = torch.einsum("ncj,nd->cjd", onehot, features)
    return sums / counts.clamp(min=1)[..., None], counts


def learning_degrees(probabilities: torch.Tensor, missing: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """d_c: share of samples predicted confidently (p < low or p > high), for missing classes; NaN elsewhere."""
    confident = ((probabilities < low) | (probabilities > high)).float().mean(0)
    return torch.where(missing, confident, torch.full_like(confident, float("nan")))


def aggregate_prototypes(local: list[tuple[torch.Tensor, torch.Tensor]], sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global prototypes: the N_k-weighted mean over clients whose prototype is defined (count > 0)."""
    weights = torch.stack([(counts > 0).float() * n for (_, counts), n in zip(local, sizes)])  # (K, C, 2)
    stacked = torch.stack([p for p, _ in local])  # (K, C, 2, D)
    total = weights.sum(0)
    merged = (stacked * weights[..., None]).sum(0) / total.clamp(min=1e-12)[..., None]
    return merged, total > 0


def aggregate_degrees(local: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """Global learning degree per class: N_k-weighted mean over the clients that miss the class."""
    stacked = torch.stack(local)  # (K, C), NaN where the client annotates the class
    weights = torch.tensor(sizes, dtype=stacked.dtype)[:, None] * ~torch.isnan(stacked)
    total = weights.sum(0)
    merged = (torch.nan_to_num(stacked) * weights).sum(0) / total.clamp(min=1e-12)
    return torch.where(total > 0, merged, torch.full_like(merged, float("nan")))


def detection_scores(features: torch.Tensor, global_prototypes: torch.Tensor) -> torch.Tensor:
    """s_ic = cos(f_i, P_c0) − cos(f_i, P_c1): ≥ 0 looks negative, < 0 looks positive. (N, C)"""
    f = F.normalize(features, dim=1)
    p = F.normalize(global_prototypes, dim=2)  # (C, 2, D)
    return f @ p[:, 0].T - f @ p[:, 1].T


def adaptive_fraction(local_degree: float, global_degree: float, bounds: ThresholdConfig) -> float:
    """τ = τ_min + (τ_max − τ_min) · sqrt(d_k · d_G): non-decreasing in both degrees, within bounds."""
    d = math.sqrt(max(local_degree, 0.0) * max(global_degree, 0.0))
    return bounds.min + (bounds.max - bounds.min) * min(d, 1.0)


def rounded_count(fraction: float, n: int) -> int:
    return min(n, int(math.floor(fraction * n + 0.5)))


def floor_count(fraction: float, n: int) -> int:
    """The published code's count: ``int(fraction * n)``."""
    return min(n, int(fraction * n))


def select(scores: torch.Tensor, eligible: torch.Tensor, fraction0: float, fraction1: float,
           count: Callable[[float, int], int] = rounded_count) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices given pseudo-label 0 and 1 for one class: among eligible samples, the fraction0 of
    negative candidates (s ≥ 0) with the largest s and the fraction1 of positive candidates (s < 0)
    with the smallest s (``count`` of each). Ties are broken by index, so the choice is deterministic."""
    negatives = torch.nonzero(eligible & (scores >= 0)).flatten()
    positives = torch.nonzero(eligible & (scores < 0)).flatten()
    order0 = torch.argsort(-scores[negatives], stable=True)[: count(fraction0, len(negatives))]
    order1 = torch.argsort(scores[positives], stable=True)[: count(fraction1, len(positives))]
    return negatives[order0].sort().values, positives[order1].sort().values


def stage2_targets(
    observed: torch.Tensor, annotated: torch.Tensor, pseudo: torch.Tensor, variant: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets and the two loss masks of stage 2, for a batch (B, C).

    Both variants: BCE on annotated entries and on every pseudo-labelled missing entry, with its
    pseudo-label as target (0 or 1). ``paper``: consistency (CR) with the global teacher on the other,
    unselected missing entries. ``official-code`` (the published ``DatasetSplit_pseudo``): the
    unselected missing entries are left out of the loss, and there is no CR term. Either way every
    missing entry falls in at most one mask."""
    missing = ~annotated[None, :].expand_as(pseudo)
    labelled = missing & (pseudo != UNLABELLED)
    targets = torch.where(labelled, pseudo.to(observed.dtype), observed)
    bce_mask = ~missing | labelled
    cr_mask = missing & ~labelled if variant == "paper" else torch.zeros_like(missing)
    return targets, bce_mask, cr_mask


def bce_weights(bce_mask: torch.Tensor, annotated: torch.Tensor, pseudo_weight: float) -> torch.Tensor:
    """Weights of the stage-2 BCE entries: 1 on annotated entries, ``pseudo_weight`` on pseudo-labelled
    ones, 0 off the mask. The BCE is Σ w·ℓ / Σ w, so the weight moves the balance between the two
    kinds without changing the loss's scale; 1 is the plain mean over the mask."""
    weights = bce_mask.float()
    return torch.where(bce_mask & ~annotated[None, :], torch.full_like(weights, pseudo_weight), weights)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·v / Σ w (0 where every weight is 0)."""
    total = weights.sum()
    return (values * weights).sum() / total if bool(total > 0) else values.sum() * 0


def oracle_targets(pseudo: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The pseudo-label matrix with every selected entry's value replaced by the hidden truth:
    the same entries, true values (``oracle_pseudolabels``, a diagnostic)."""
    return torch.where(pseudo != UNLABELLED, truth.to(pseudo.dtype), pseudo)


# ---------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    prototypes: torch.Tensor | None = None  # (C, 2, D)
    defined: torch.Tensor | None = None  # (C, 2) bool
    degrees: torch.Tensor | None = None  # (C,) global learning degrees (NaN for classes nobody misses)
    prior: torch.Tensor | None = None  # (C,) global class prior (degree_scale: prior), from the census


class FedMLP(StagedMethod):
    # degree: NaN for the classes the client annotates (it has no learning degree there)
    payloads = {CENSUS: {"counts": Entry(torch.float32, ("C", 2), minimum=0, maximum="N")},
                "prepare": {"prototypes": Entry(torch.float32, ("C", 2, "D")),
                            "counts": Entry(torch.float32, ("C", 2), minimum=0, maximum="N"),
                            "degree": Entry(torch.float32, ("C",), nan=True, minimum=0, maximum=1)}}

    def __init__(self, name: str, config: FedMLPConfig):
        self.name = name
        self.config = config
        self.server = ServerState()
        self.preloaded: dict[str, Any] | None = None  # an exported first detection (the teacher stage)
        if config.oracle_pseudolabels:
            log.warning("%s: %s", name, ORACLE_WARNING)

    def warnings(self) -> list[str]:
        return [ORACLE_WARNING] if self.config.oracle_pseudolabels else []

    def reads_hidden_labels(self) -> bool:
        return self.config.oracle_pseudolabels

    @property
    def first_stage2_round(self) -> int:
        return self.config.warmup_rounds

    def n_rounds(self, train: Any) -> int:
        """``train.rounds`` in all, as every method: the warm-up's, then stage 2's (at least one)."""
        if self.config.warmup_rounds >= train.rounds:
            raise FedmlpError(warmup_too_long(self.config.warmup_rounds, train.rounds))
        return train.rounds

    def init_client_state(self, client: ClientData) -> dict[str, Any]:
        return {
            "offset": logit_offset(class_prior(client.observed, client.annotated)),
            "pseudo": torch.full(client.observed.shape, UNLABELLED, dtype=torch.int8),
            "degree": torch.full((client.observed.shape[1],), float("nan")),
            "thresholds": {},
        }

    def _preloaded_round(self, round: int) -> bool:
        return self.preloaded is not None and round == self.first_stage2_round

    # --- the prepare exchange of a stage-2 round -----------------------------------------------

    def prepares(self, round: int) -> bool:
        return round >= self.first_stage2_round and not self._preloaded_round(round)

    def census(self, round: int) -> bool:
        """With ``degree_scale: prior``, once: before the first prepare exchange that needs the prior
        (the first stage-2 round, unless a preloaded detection or a resumed state brought it)."""
        return self.config.degree_scale == "prior" and self.server.prior is None and self.prepares(round)

    def client_census(self, ctx: LocalContext) -> dict[str, Any]:
        """The client's label counts per annotated class (C, 2): what its prototype upload's counts reveal too."""
        return {"counts": label_counts(ctx.client.observed, ctx.client.annotated)}

    def server_census(self, server: ServerContext, uploads: list[Upload]) -> None:
        self.server.prior = global_prior([u.payload["counts"] for u in uploads])

    def client_prepare(self, ctx: LocalContext) -> dict[str, Any]:
        """One pass over the client's images with the received model: its learning degrees (kept in
        its state), its local prototypes (uploaded) and its features (kept for the detection). With
        ``degree_scale: prior`` the degrees count σ(z + log(π/(1−π))), π the broadcast global prior."""
        offset = logit_offset(ctx.payload["prior"]) if self.config.degree_scale == "prior" else None
        features, probabilities = client_pass(ctx.model, ctx.store, ctx.client, ctx.runtime, offset=offset)
        ctx.state["degree"] = learning_degrees(probabilities, ctx.client.missing, self.config.confidence_low, self.config.confidence_high)
        ctx.state["features"] = features
        local, counts = prototypes(features, ctx.client.observed, ctx.client.annotated)
        return {"prototypes": local, "counts": counts, "degree": ctx.state["degree"]}

    def server_prepare(self, server: ServerContext, uploads: list[Upload]) -> dict[str, Any]:
        sizes = [u.n_samples for u in uploads]
        self.server.prototypes, self.server.defined = aggregate_prototypes(
            [(u.payload["prototypes"], u.payload["counts"]) for u in uploads], sizes)
        self.server.degrees = aggregate_degrees([u.payload["degree"] for u in uploads], sizes)
        return self.broadcast_payload(server)

    def broadcast_payload(self, server: ServerContext) -> dict[str, Any]:
        if server.round < self.first_stage2_round:
            return {}
        payload = {"prior": self.server.prior} if self.server.prior is not None else {}
        if self.server.prototypes is not None:
            payload.update({"prototypes": self.server.prototypes, "defined": self.server.defined, "degrees": self.server.degrees})
        return payload

    # --- client side: detection before training -------------------------------------------------

    def before_training(self, ctx: LocalContext) -> None:
        if ctx.round < self.first_stage2_round:
            return
        if self._preloaded_round(ctx.round):
            self._restore_client(ctx)
        else:
            self.detect(ctx.client, ctx.state, ctx.state.pop("features"), ctx.payload)
        entries = ctx.state["pseudo"][:, ctx.client.missing]
        if entries.numel():  # the gate log: the share of missing entries pseudo-labelled so far
            record_gate(ctx.state, "pseudo", float((entries != UNLABELLED).float().mean()))
        if self.config.oracle_pseudolabels:  # the selection stays in state["pseudo"] (diagnostics); training reads these
            ctx.state["oracle"] = oracle_targets(ctx.state["pseudo"], ctx.hidden_labels)

    def _fractions(self, state: dict[str, Any], global_degrees: torch.Tensor, c: int) -> tuple[float, float]:
        if self.config.selection == "fixed":
            return self.config.tau0.fixed, self.config.tau1.fixed
        d_local, d_global = float(state["degree"][c]), float(global_degrees[c])
        return adaptive_fraction(d_local, d_global, self.config.tau0), adaptive_fraction(d_local, d_global, self.config.tau1)

    def detect(self, client: ClientData, state: dict[str, Any], features: torch.Tensor, payload: dict[str, Any]) -> None:
        """Extend the client's pseudo-labels on its missing classes, by the global prototypes."""
        scores = detection_scores(features, payload["prototypes"])
        pseudo = state["pseudo"] if self.config.accumulate else torch.full_like(state["pseudo"], UNLABELLED)
        state["thresholds"] = {}
        for c in torch.nonzero(client.missing).flatten().tolist():
            if not bool(payload["defined"][c].all()):
                continue  # no client has both labels of c: nothing to compare with
            tau0, tau1 = self._fractions(state, payload["degrees"], c)
            count = floor_count if self.config.variant == "official-code" else rounded_count
            negatives, positives = select(scores[:, c], pseudo[:, c] == UNLABELLED, tau0, tau1, count)
            pseudo[negatives, c] = 0
            pseudo[positives, c] = 1
            state["thresholds"][c] = (tau0, tau1)
        state["pseudo"] = pseudo

    # --- pseudo-label artifacts (the pseudolabel stage) ----------------------------------------

    def export(self, clients: list[ClientData], states: list[dict[str, Any]], store: ImageView) -> dict[str, Any]:
        """The state after detection, as JSON: image IDs per client, class and pseudo-label."""
        classes = store.classes
        out_clients = []
        for client, state in zip(clients, states):
            ids = [store.image_ids[r] for r in client.rows]
            entry: dict[str, Any] = {"id": client.client_id, "classes": {}}
            for c in torch.nonzero(client.missing).flatten().tolist():
                column = state["pseudo"][:, c]
                tau = state["thresholds"].get(c)
                entry["classes"][classes[c]] = {
                    "learning_degree": _num(state["degree"][c]),
                    "tau0": tau[0] if tau else None,
                    "tau1": tau[1] if tau else None,
                    "pseudo_negative": [ids[i] for i in torch.nonzero(column == 0).flatten().tolist()],
                    "pseudo_positive": [ids[i] for i in torch.nonzero(column == 1).flatten().tolist()],
                }
            out_clients.append(entry)
        return {
            "method": self.name,
            "round": self.first_stage2_round + 1,
            "config": dataclasses.asdict(self.config),
            "classes": classes,
            "global_learning_degree": {c: _num(v) for c, v in zip(classes, self.server.degrees)},
            **({"global_prior": {c: float(v) for c, v in zip(classes, self.server.prior)}} if self.server.prior is not None else {}),
            "global_prototypes": {
                c: {"negative": self.server.prototypes[i, 0].tolist() if self.server.defined[i, 0] else None,
                    "positive": self.server.prototypes[i, 1].tolist() if self.server.defined[i, 1] else None}
                for i, c in enumerate(classes)
            },
            "clients": out_clients,
        }

    def preload(self, artifact: dict[str, Any]) -> None:
        """Use an exported detection for the first stage-2 round instead of recomputing it: the
        server's prototypes, degrees (and global prior) from the artifact, each client's pseudo-labels
        from its entry."""
        self.preloaded = artifact
        protos = artifact["global_prototypes"]
        classes = artifact["classes"]
        dim = next((len(v) for c in classes for v in protos[c].values() if v is not None), 1)
        self.server.prototypes = torch.tensor(
            [[protos[c]["negative"] or [0.0] * dim, protos[c]["positive"] or [0.0] * dim] for c in classes]
        )
        self.server.defined = torch.tensor([[protos[c]["negative"] is not None, protos[c]["positive"] is not None] for c in classes])
        self.server.degrees = torch.tensor([_nan(artifact["global_learning_degree"][c]) for c in classes])
        if "global_prior" in artifact:
            self.server.prior = torch.tensor([float(artifact["global_prior"][c]) for c in classes])

    def _restore_client(self, ctx: LocalContext) -> None:
        artifact = self.preloaded
        classes = ctx.store.classes
        if artifact["classes"] != classes:
            raise ValueError("pseudo-label artifact was made for other classes")
        entry = next(e for e in artifact["clients"] if e["id"] == ctx.client.client_id)
        position = {ctx.store.image_ids[r]: i for i, r in enumerate(ctx.client.rows)}
        state = ctx.state
        state["thresholds"] = {}
        for name, info in entry["classes"].items():
            c = classes.index(name)
            state["degree"][c] = _nan(info["learning_degree"])
            state["pseudo"][[position[i] for i in info["pseudo_negative"]], c] = 0
            state["pseudo"][[position[i] for i in info["pseudo_positive"]], c] = 1
            if info["tau0"] is not None:
                state["thresholds"][c] = (info["tau0"], info["tau1"])

    # --- client side ---------------------------------------------------------------------------

    def views(self, round: int) -> int:
        if round < self.first_stage2_round:
            return 2
        return 1 if self.config.variant == "official-code" else self.config.stage2_views

    def loss(self, ctx: LocalContext, batch: Batch) -> torch.Tensor:
        views = self.views(ctx.round)
        images = torch.cat([ctx.augment(batch.images) for _ in range(views)])  # the views in one forward
        logits = ctx.model(images).float()
        observed = batch.observed.repeat(views, 1)
        annotated = batch.annotated
        stage2 = ctx.round >= self.first_stage2_round
        official = stage2 and self.config.variant == "official-code"
        adjust = self.config.logit_adjust and not official
        offset = ctx.state["offset"].to(logits.device) if adjust else 0.0
        if not stage2:
            targets, bce_mask = observed, annotated[None, :].expand_as(observed)
            cr_mask, weight = ~bce_mask, self.config.lambda_dis
        else:
            matrix = ctx.state["oracle" if self.config.oracle_pseudolabels else "pseudo"]
            pseudo = matrix[batch.positions].to(logits.device).repeat(views, 1)
            targets, bce_mask, cr_mask = stage2_targets(observed, annotated, pseudo, self.config.variant)
            weight = 0.0 if official else self.config.lambda_cr
        bce = F.binary_cross_entropy_with_logits(logits + offset, targets, reduction="none")
        if stage2 and self.config.pseudo_weight != 1.0:
            loss = weighted_mean(bce, bce_weights(bce_mask, annotated, self.config.pseudo_weight))
        else:
            loss = masked_mean(bce, bce_mask)
        if weight > 0 and bool(cr_mask.any()):
            with torch.inference_mode():  # the teacher is a constant target: no autograd bookkeeping
                teacher = torch.sigmoid(ctx.teacher(images).float())
            loss = loss + weight * masked_mean((torch.sigmoid(logits) - teacher) ** 2, cr_mask)
        return loss


def _num(value: torch.Tensor | float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


VARIANTS: dict[str, tuple[dict[str, Any], str, str]] = {  # name: (settings it fixes, summary, display name)
    "fedmlp": ({}, "FedMLP: prototype pseudo-labels with adaptive thresholds + global teacher", "FedMLP"),
    "fedmlp-fixed": ({"selection": "fixed", "accumulate": True}, "FedMLP with the published code's fixed, accumulated fractions",
                     "FedMLP (fixed fractions)"),
    "fedmlp-official": ({"variant": "official-code", "selection": "fixed", "accumulate": True},
                        "FedMLP's stage 2 as the published code runs it", "FedMLP (published code)"),
}


def warmup_too_long(warmup_rounds: int, rounds: int) -> str:
    """The one-line error of a warm-up that leaves stage 2 no round (workflow config and CLI alike)."""
    return (f"config key 'fedmlp.warmup_rounds': {warmup_rounds} leaves no stage-2 round of train.rounds {rounds} "
            f"(stage 2 runs train.rounds − fedmlp.warmup_rounds rounds); set it below {rounds}")


def replaced_key(settings: dict[str, Any]) -> str | None:
    """The one-line error for the first key of ``settings`` that FedMLP no longer has (None: none)."""
    old = next((key for key in FedMLPConfig.REPLACED_KEYS if key in settings), None)
    return None if old is None else f"config key 'fedmlp.{old}': {FedMLPConfig.REPLACED_KEYS[old]}"


def make(name: str, settings: dict[str, Any]) -> FedMLP:
    if (error := replaced_key(settings)) is not None:
        raise FedmlpError(error)
    return FedMLP(name, from_dict(FedMLPConfig, {**settings, **VARIANTS[name][0]}, "fedmlp"))


for _variant, (_, _summary, _display) in VARIANTS.items():  # one registry entry per variant, all sharing the warm-up
    register(_variant, section="fedmlp", config=FedMLPConfig, staged=True, summary=_summary, display=_display)(
        lambda settings, name=_variant: make(name, settings))
