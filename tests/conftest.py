"""Shared fixtures: a small synthetic dataset in the RSNA layout and its image store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fedmlp.config import FederationConfig, PreprocessConfig, SplitConfig, SyntheticConfig
from fedmlp.ingest import ingest_ich
from fedmlp.partition import partition, partition_artifact, random_split
from fedmlp.sources import synthetic
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


@pytest.fixture(scope="session")
def federation(store: ImageStore) -> dict:
    """A partition of the small store: 3 clients, 2 annotated classes each."""
    split = random_split(store.image_ids, SplitConfig())
    config = FederationConfig(n_clients=3, annotated_per_client=2)
    clients = partition(split.train, store.labels[store.rows(split.train)], store.classes, config)
    return partition_artifact(store.classes, clients, split.test, config)
