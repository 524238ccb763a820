"""Split and partition invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmlp.config import FederationConfig, SplitConfig
from fedmlp.errors import FedmlpError
from fedmlp.partition import assign_classes, partition, partition_artifact, random_split

CLASSES = ["a", "b", "c", "d", "e"]


def _data(n: int = 400, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"img{i:04d}" for i in range(n)], (rng.random((n, len(CLASSES))) < 0.2).astype(np.int8)


def test_split_sizes_and_reproducibility() -> None:
    ids, _ = _data(1000)
    split = random_split(ids, SplitConfig(train_fraction=0.7, seed=1))
    assert len(split.test) == math.ceil((1 - 0.7) * 1000) and len(split.train) + len(split.test) == 1000
    assert set(split.train).isdisjoint(split.test)
    assert random_split(ids, SplitConfig(train_fraction=0.7, seed=1)) == split
    assert random_split(ids, SplitConfig(train_fraction=0.7, seed=2)) != split


def test_split_follows_the_paper_procedure() -> None:
    ids = [str(i) for i in range(67310)]
    split = random_split(ids, SplitConfig(train_fraction=0.7, seed=2023))
    assert len(split.test) == 20194  # ceil of (1 - 0.7)·N in floating point, as the paper's code
    perm = np.random.RandomState(2023).permutation(67310)
    assert split.test[:3] == [str(i) for i in perm[:3]] and split.train[:3] == [str(i) for i in perm[20194:20197]]


@pytest.mark.parametrize("shape", ["iid", "dirichlet"])
@pytest.mark.parametrize("per_client", [1, 2, 3])
def test_partition_invariants(shape: str, per_client: int) -> None:
    ids, labels = _data()
    config = FederationConfig(n_clients=5, partition=shape, dirichlet_alpha=0.5, annotated_per_client=per_client, seed=3)
    clients = partition(ids, labels, CLASSES, config)
    assert [c["id"] for c in clients] == list(range(5))
    images = [set(c["images"]) for c in clients]
    assert sum(len(s) for s in images) == len(ids) and set().union(*images) == set(ids)  # disjoint and complete
    assert all(len(c["annotated_classes"]) == per_client for c in clients)
    assert set().union(*(c["annotated_classes"] for c in clients)) == set(CLASSES)
    if shape == "iid":
        sizes = [len(s) for s in images]
        assert max(sizes) - min(sizes) <= 1
    assert partition(ids, labels, CLASSES, config) == clients
    assert partition(ids, labels, CLASSES, FederationConfig(**{**config.__dict__, "seed": 4})) != clients


def test_dirichlet_skews_label_distributions() -> None:
    ids, labels = _data(2000)
    skewed = partition(ids, labels, CLASSES, FederationConfig(partition="dirichlet", dirichlet_alpha=0.1, seed=0))
    even = partition(ids, labels, CLASSES, FederationConfig(partition="iid", seed=0))
    index = {image: i for i, image in enumerate(ids)}

    def spread(clients):
        prevalence = np.array([labels[[index[i] for i in c["images"]]].mean(axis=0) for c in clients])
        return prevalence.std(axis=0).mean()

    assert spread(skewed) > 2 * spread(even)


def test_one_class_per_client_covers_all_classes_once() -> None:
    assigned = assign_classes(CLASSES, FederationConfig(n_clients=5, annotated_per_client=1, seed=9))
    assert sorted(c[0] for c in assigned) == CLASSES


def test_listed_classes() -> None:
    listed = [["a", "b"], ["c"], ["d", "e"]]
    assert assign_classes(CLASSES, FederationConfig(n_clients=3, annotated_classes=listed)) == listed


@pytest.mark.parametrize(
    ("config", "key"),
    [
        (FederationConfig(n_clients=5, annotated_per_client=6), "federation.annotated_per_client"),
        (FederationConfig(n_clients=2, annotated_per_client=2), "federation.annotated_per_client"),
        (FederationConfig(n_clients=2, annotated_classes=[["a", "b"], ["c"]]), "federation.annotated_classes"),
        (FederationConfig(n_clients=2, annotated_classes=[["a", "zz"], ["b", "c", "d", "e"]]), r"federation.annotated_classes\[0\]"),
        (FederationConfig(n_clients=300), "federation.n_clients"),
        (FederationConfig(partition="dirichlet", dirichlet_alpha=0), "federation.dirichlet_alpha"),
    ],
)
def test_impossible_settings_name_the_key(config: FederationConfig, key: str) -> None:
    ids, labels = _data()
    with pytest.raises(FedmlpError, match=f"config key '{key}'"):
        partition(ids, labels, CLASSES, config)


def test_paper_sampler_is_the_papers_code() -> None:
    """The procedure of docs/data.md written literally, with numpy's and Python's global seeds."""
    import random

    from fedmlp.partition import paper_clients

    n_train, k = 1_000, 5
    np.random.seed(1037)
    pool = list(range(n_train))
    literal = []
    for _ in range(k):
        chosen = set(np.random.choice(pool, n_train // k, replace=False))
        pool = list(set(pool) - chosen)
        literal.append(list(chosen))
    assert paper_clients(n_train, k, 1037, None) == [[int(i) for i in c] for c in literal]
    random.seed(1037)
    sampled = [random.sample(c, 50) for c in literal]
    assert paper_clients(n_train, k, 1037, 50) == [[int(i) for i in c] for c in sampled]
    with pytest.raises(FedmlpError, match="federation.images_per_client"):
        paper_clients(n_train, k, 1037, 201)


def test_unreadable_images_leave_the_partition_recorded() -> None:
    from fedmlp.partition import keep_stored

    artifact = partition_artifact(CLASSES, [{"id": 0, "images": ["a", "b", "c"], "annotated_classes": ["a"]}], ["d", "e"], FederationConfig())
    kept = keep_stored(artifact, {"a", "c", "e"})
    assert kept["clients"][0]["images"] == ["a", "c"] and kept["test"] == ["e"]
    assert kept["meta"]["dropped_unreadable"] == {"test": 1, "client 0": 1}
