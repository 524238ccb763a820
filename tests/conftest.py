"""Shared fixtures: a small synthetic dataset in the RSNA layout and its image store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fedmlp.config import PreprocessConfig, SyntheticConfig
from fedmlp.ingest import ingest_ich
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
