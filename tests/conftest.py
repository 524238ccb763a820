"""Shared fixtures: a small synthetic dataset in the RSNA layout and its image store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fedmlp.config import FederationConfig, PreprocessConfig, SplitConfig
from fedmlp.partition import carve_validation, partition, partition_artifact, random_split
from fedmlp.sources import synthetic
from fedmlp.sources.rsna import ingest_ich
from fedmlp.sources.synthetic import SyntheticConfig
from fedmlp.store import ImageStore

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FEDMLP_PROGRESS", "0")


def bin_dir() -> str:
    """The directory of this interpreter's console scripts (fedmlp, snakemake, dvc)."""
    return str(Path(sys.executable).parent)


@pytest.fixture(scope="session")
def synthetic_config() -> SyntheticConfig:
    return SyntheticConfig(n_images=80, image_size=64, signed_as_unsigned_fraction=0.3, multivalued_window_fraction=0.3)


@pytest.fixture(scope="session")
def raw_dataset(tmp_path_factory: pytest.TempPathFactory, synthetic_config: SyntheticConfig) -> Path:
    root = tmp_path_factory.mktemp("raw")
    synthetic.generate(synthetic_config, root)
    return root


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, raw_dataset: Path) -> ImageStore:
    out = tmp_path_factory.mktemp("stores") / "header32"
    ingest_ich(raw_dataset, out, PreprocessConfig(windowing="header", size=32), "synthetic-ich")
    return ImageStore.open(out)


def _federation(store: ImageStore, val_fraction: float) -> dict:
    config = SplitConfig(val_fraction=val_fraction)
    split = carve_validation(random_split(store.image_ids, config), config)
    federation = FederationConfig(n_clients=3, annotated_per_client=2)
    clients = partition(split.train, store.labels[store.rows(split.train)], store.classes, federation)
    return partition_artifact(store.classes, clients, split.test, federation, split.val)


@pytest.fixture(scope="session")
def federation(store: ImageStore) -> dict:
    """A partition of the small store: 3 clients, 2 annotated classes each, no validation set."""
    return _federation(store, 0.0)


@pytest.fixture(scope="session")
def validated_federation(store: ImageStore) -> dict:
    """The same with a validation set: a fifth of the training images (11) held out before partitioning."""
    return _federation(store, 0.2)
