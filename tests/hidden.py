"""Labels the training side must never read, permuted: the input of the leakage tests (the contract
suite's permutation test, the staged FedMLP workflow, the Flower site)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from fedmlp.store import CANDIDATES, IMAGES, LABELS, MANIFEST, ImageStore


def permuted_labels(store: ImageStore, federation: dict, seed: int = 0) -> np.ndarray:
    """``store.labels`` with the labels no client may see flipped and permuted: each client's missing
    classes among its images, and the test and validation images' labels (whole rows) among those
    images. The labels of annotated classes are left as they are."""
    labels = store.labels.copy()
    rng = np.random.default_rng(seed)
    for entry in federation["clients"]:
        rows = store.rows(entry["images"])
        for c, name in enumerate(store.classes):
            if name not in entry["annotated_classes"]:
                labels[rows, c] = rng.permutation(1 - labels[rows, c])
    for ids in (federation["test"], federation.get("val", [])):
        rows = store.rows(ids)
        labels[rows] = 1 - labels[rows][rng.permutation(len(rows))]
    assert (labels != store.labels).any(), "the permutation must change some hidden label"
    return labels


def write_store(store: ImageStore, labels: np.ndarray, out: Path) -> Path:
    """A copy of ``store`` with ``labels`` in its labels.csv (and the manifest's checksum and positive
    counts to match), so that the CLI and the Flower site open it as they open any store."""
    out.mkdir(parents=True)
    for name in (IMAGES, CANDIDATES):
        if (store.root / name).exists():
            shutil.copyfile(store.root / name, out / name)
    table = pd.DataFrame(labels, columns=store.classes)
    table.insert(0, "image_id", store.image_ids)
    table.to_csv(out / LABELS, index=False)
    manifest = json.loads((store.root / MANIFEST).read_text())
    manifest["sha256"][LABELS] = hashlib.sha256((out / LABELS).read_bytes()).hexdigest()
    if "positives" in manifest:
        manifest["positives"] = {c: int(labels[:, i].sum()) for i, c in enumerate(store.classes)}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out
