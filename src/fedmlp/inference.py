"""Forward passes over a set of store rows without augmentation (evaluation, feature extraction)."""

from __future__ import annotations

import numpy as np
import torch

from fedmlp.augment import to_float
from fedmlp.loader import iterate_rows
from fedmlp.models import Classifier
from fedmlp.runtime import Runtime
from fedmlp.store import ImageView


@torch.inference_mode()
def predict_proba(model: Classifier, store: ImageView, rows: np.ndarray, runtime: Runtime, batch_size: int = 256) -> np.ndarray:
    """Sigmoid outputs (N, C) as float32, rows in the given order; the model is left in eval mode."""
    model.eval()
    out = np.empty((len(rows), model.head.out_features), dtype=np.float32)
    for chunk, images in iterate_rows(store, rows, batch_size, runtime.device):
        with runtime.autocast():
            logits = model(to_float(images))
        out[chunk] = torch.sigmoid(logits.float()).cpu().numpy()
    return out
