"""Split and partition invariants."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedmlp.cli import main
from fedmlp.config import FederationConfig, SplitConfig
from fedmlp.errors import FedmlpError
from fedmlp.partition import assign_classes, carve_validation, partition, partition_artifact, random_split
from fedmlp.store import ImageStore

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
    artifact = partition_artifact(CLASSES, [{"id": 0, "images": ["a"], "annotated_classes": ["a"]}], ["d"], FederationConfig(), ["b", "c"])
    kept = keep_stored(artifact, {"a", "c", "d"})
    assert kept["val"] == ["c"] and kept["meta"]["dropped_unreadable"] == {"test": 0, "val": 1, "client 0": 0}


def test_validation_set_is_carved_from_the_training_images_only() -> None:
    ids, _ = _data(1000)
    config = SplitConfig(val_fraction=0.1, seed=1)
    before = random_split(ids, config)
    split = carve_validation(before, config)
    assert split.test == before.test  # the test set is the paper's whatever the fraction
    assert len(split.val) == 70 and sorted(split.train + split.val) == sorted(before.train)
    assert set(split.val).isdisjoint(split.train) and set(split.val).isdisjoint(split.test)
    assert split.train == [i for i in before.train if i not in set(split.val)]  # the order the paper's sampler sees
    assert carve_validation(before, config) == split
    assert carve_validation(before, SplitConfig(val_fraction=0.1, seed=2)).val != split.val
    assert carve_validation(before, SplitConfig(val_fraction=0.0, seed=1)) == before


def test_validation_by_patient_keeps_each_patient_on_one_side() -> None:
    ids = [f"{p:03d}_{k}.png" for p in range(40) for k in range(p % 4 + 1)]  # 40 patients of 1 to 4 images
    patients = {i: i.split("_")[0] for i in ids}
    split = carve_validation(random_split(ids, SplitConfig()), SplitConfig(val_fraction=0.2), patients)
    assert {patients[i] for i in split.val}.isdisjoint({patients[i] for i in split.train})
    n_train = len(split.train) + len(split.val)
    assert round(0.2 * n_train) <= len(split.val) < round(0.2 * n_train) + 4  # whole patients, up to one too many


@pytest.mark.parametrize(
    ("n", "fraction", "message"),
    [
        (20, 0.02, "config key 'split.val_fraction': 0.02 of 13 training images is no validation image"),
        (4, 0.9, "config key 'split.val_fraction': 0.9 leaves no training images"),
    ],
)
def test_a_validation_set_of_nothing_or_everything_names_the_key(n: int, fraction: float, message: str) -> None:
    ids, _ = _data(n)
    config = SplitConfig(val_fraction=fraction)
    with pytest.raises(FedmlpError, match=message):
        carve_validation(random_split(ids, config), config)


def _split_and_partition(store: ImageStore, out: Path, split: dict, federation: dict | None = None) -> tuple[bytes, bytes]:
    assert main(["split", "--store", str(store.root), "--settings", json.dumps(split), "--out", str(out / "split.json")]) == 0
    assert main(["partition", "--store", str(store.root), "--split", str(out / "split.json"), "--out", str(out / "partition.json"),
                 "--settings", json.dumps(federation or {"n_clients": 3, "annotated_per_client": 2})]) == 0
    return (out / "split.json").read_bytes(), (out / "partition.json").read_bytes()


def test_clients_are_formed_without_the_validation_images(store: ImageStore, tmp_path: Path) -> None:
    split_bytes, partition_bytes = _split_and_partition(store, tmp_path, {"val_fraction": 0.2})
    split, artifact = json.loads(split_bytes), json.loads(partition_bytes)
    assert len(split["val"]) == round(0.2 * len(split["train"] + split["val"])) and split["meta"]["split"]["val_fraction"] == 0.2
    assert artifact["val"] == split["val"] and artifact["test"] == split["test"]
    clients = [i for c in artifact["clients"] for i in c["images"]]
    assert sorted(clients) == sorted(split["train"]) and set(clients).isdisjoint(artifact["val"])
    assert set(artifact["val"]).isdisjoint(artifact["test"])


def test_no_validation_set_writes_the_artifacts_of_before(store: ImageStore, tmp_path: Path) -> None:
    """val_fraction 0 (the paper's configs): the split.json and partition.json written before the key existed."""
    split_bytes, partition_bytes = _split_and_partition(store, tmp_path, {"val_fraction": 0})
    old_split = random_split(store.candidates(), SplitConfig())
    assert json.loads(split_bytes) == {**old_split.to_json(), "meta": {"split": {"method": "paper", "train_fraction": 0.7, "seed": 2023}}}
    assert list(json.loads(split_bytes)) == ["train", "test", "meta"]
    config = FederationConfig(n_clients=3, annotated_per_client=2)
    old = partition_artifact(store.classes, partition(old_split.train, None, store.classes, config), old_split.test, config)
    artifact = json.loads(partition_bytes)
    assert list(artifact) == ["classes", "clients", "test", "meta"] and artifact["clients"] == old["clients"]
    assert list(artifact["meta"]["dropped_unreadable"]) == ["test", "client 0", "client 1", "client 2"]
    assert _split_and_partition(store, tmp_path, {}) == (split_bytes, partition_bytes)  # 0 is also the library's default


def test_a_validation_set_that_starves_the_clients_names_the_key(store: ImageStore, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["split", "--store", str(store.root), "--settings", '{"val_fraction": 0.9}', "--out", str(tmp_path / "split.json")]) == 0
    code = main(["partition", "--store", str(store.root), "--split", str(tmp_path / "split.json"), "--settings", '{"n_clients": 4}',
                 "--out", str(tmp_path / "partition.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("fedmlp partition: error: config key 'split.val_fraction': its 50 validation images leave 5 training images")
    assert not (tmp_path / "partition.json").exists()
