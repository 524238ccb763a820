"""Model checkpoints: plain tensors and JSON-like metadata, loaded with ``weights_only=True``."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from fedmlp.atomic import atomic_path
from fedmlp.config import ModelConfig, from_dict
from fedmlp.errors import FedmlpError, one_line
from fedmlp.models import Classifier, build_model

FORMAT = 1


def save(path: Path, model: Classifier, meta: dict[str, Any]) -> None:
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # a file object, not a path: torch would name the archive after the temporary file,
        # and the same weights would give different bytes
        torch.save({"format": FORMAT, "state_dict": state, "meta": meta}, handle)


def as_loaded(model: Classifier, meta: dict[str, Any]) -> Classifier:
    """The model exactly as :func:`load` rebuilds it from the file :func:`save` writes (fresh, contiguous
    CPU parameters), without the file: a command can score what it saves before its outputs are in place."""
    config = from_dict(ModelConfig, {**meta["model"], "pretrained": False, "weights_path": None}, "model")
    rebuilt = build_model(config, len(meta["classes"]))
    rebuilt.load_state_dict({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
    return rebuilt


def load(path: Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the model a checkpoint describes. Refuses pickled code and foreign architectures."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise FedmlpError(f"{path}: not loadable safely: it holds pickled objects other than tensors and plain data, "
                          "which could run code (refused, not a fedmlp checkpoint)") from None
    except FileNotFoundError:
        raise FedmlpError(f"{path}: checkpoint not found") from None
    except Exception as exc:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise FedmlpError(f"{path}: empty file (0 bytes), not a fedmlp checkpoint (a copy or download that did not finish?)") from None
        first = (str(exc).strip().splitlines() or ["no detail"])[0]  # torch raises some errors without a message
        raise FedmlpError(f"{path}: not a fedmlp checkpoint, or truncated or corrupt ({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "meta" not in payload:
        raise FedmlpError(f"{path}: not a fedmlp checkpoint (format {FORMAT} expected)")
    meta, state = payload["meta"], payload.get("state_dict")
    if not (isinstance(meta, dict) and isinstance(meta.get("model"), dict) and isinstance(meta.get("classes"), list)
            and meta["classes"] and isinstance(state, dict)):
        raise FedmlpError(f"{path}: not a fedmlp checkpoint (no model description, class list or weights)")
    try:
        config = from_dict(ModelConfig, {**meta["model"], "pretrained": False, "weights_path": None}, "model")
    except FedmlpError as exc:
        raise FedmlpError(f"{path}: describes a model this version cannot build ({exc})") from None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise FedmlpError(f"{path}: not a fedmlp checkpoint (weights that are not tensors)")
    broken = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:
        raise FedmlpError(f"{path}: weights hold NaN or infinite values ({broken}): the training diverged or the file was edited")
    if not all(isinstance(c, str) and c for c in meta["classes"]) or len(set(meta["classes"])) != len(meta["classes"]):
        raise FedmlpError(f"{path}: not a fedmlp checkpoint (class list {meta['classes']!r})")
    model = build_model(config, len(meta["classes"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = one_line(exc)
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise FedmlpError(f"{path}: weights do not fit the architecture it names ({detail})") from None
    return model, meta
