"""Who holds which images and which classes they annotate: the train/validation/test split and the federation.

The partition artifact (``partition.json``) is what the training stages read::

    {"classes": [...],
     "clients": [{"id": 0, "images": [...], "annotated_classes": [...]}, ...],
     "test": [...],
     "val": [...],
     "meta": {...}}

``val`` (the server's validation set, ``split.val_fraction`` of the training images) is left out when
there is none, so that ``val_fraction: 0`` writes the artifacts of before the key existed, byte for byte.

Image IDs are those of the source; it carries no labels. The true labels of a client's missing
classes therefore never reach training code (docs/method.md): training reads the store's labels only
through :func:`fedmlp.loader.observed_labels`, which keeps the annotated columns.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmlp.config import FederationConfig, SplitConfig, to_dict
from fedmlp.errors import FedmlpError, printable
from fedmlp.inputs import id_list, read_json, require
from fedmlp.seeding import numpy_rng

if TYPE_CHECKING:
    from fedmlp.store import ImageStore

MIN_CLIENT_IMAGES = 2
TEST_OWNER, VAL_OWNER = -1, -2  # check_partition: who holds an image, besides the clients


@dataclass(frozen=True)
class Split:
    """Disjoint image lists; ``val`` is empty without a validation set."""

    train: list[str]
    test: list[str]
    val: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"train": self.train, "test": self.test, **({"val": self.val} if self.val else {})}


def random_split(image_ids: list[str], config: SplitConfig) -> Split:
    """Image-level split as the paper's code does it: ``numpy.random.seed(seed)``, one permutation,
    the first ``ceil((1 - train_fraction) * N)`` positions are the test set."""
    if not 0 < config.train_fraction < 1:
        raise FedmlpError(f"config key 'split.train_fraction': expected a number in (0, 1), got {config.train_fraction}")
    n = len(image_ids)
    n_test = math.ceil((1 - config.train_fraction) * n)
    if n_test < 1 or n_test >= n:
        raise FedmlpError(f"config key 'split.train_fraction': {config.train_fraction} leaves an empty train or test set for {n} images")
    perm = np.random.RandomState(config.seed).permutation(n)
    return Split(train=[image_ids[i] for i in perm[n_test:]], test=[image_ids[i] for i in perm[:n_test]])


def patient_split(image_ids: list[str], patients: Mapping[str, str], config: SplitConfig) -> Split:
    """:func:`random_split` by patient: one seeded permutation of the patients (in order of first
    appearance), whose images fill the test set until it holds ``ceil((1 - train_fraction) * N)`` images,
    so that no patient is on both sides."""
    if not 0 < config.train_fraction < 1:
        raise FedmlpError(f"config key 'split.train_fraction': expected a number in (0, 1), got {config.train_fraction}")
    members: dict[str, list[str]] = {}
    for image in image_ids:
        members.setdefault(patients[image], []).append(image)
    names = list(members)
    n_test = math.ceil((1 - config.train_fraction) * len(image_ids))
    test: set[str] = set()
    for index in np.random.RandomState(config.seed).permutation(len(names)):
        if len(test) >= n_test:
            break
        test.update(members[names[index]])
    if not test or len(test) == len(image_ids):
        raise FedmlpError(f"config key 'split.train_fraction': {config.train_fraction} leaves an empty train or test set for "
                          f"{len(names)} patients")
    return Split(train=[i for i in image_ids if i not in test], test=[i for i in image_ids if i in test])


def site_clients(train_ids: list[str], sites: Mapping[str, str], classes: list[str],
                 unassessed: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """``federation.partition: site``: one client per site (in order of first appearance), holding its
    training images and annotating the classes it assessed (custom data, :mod:`fedmlp.sources.custom`)."""
    names = list(dict.fromkeys(sites[i] for i in train_ids))
    return [
        {"id": client, "images": [i for i in train_ids if sites[i] == site],
         "annotated_classes": [c for c in classes if c not in unassessed.get(site, [])]}
        for client, site in enumerate(names)
    ]


def manifest_split(manifest: dict[str, Any], image_ids: list[str], config: SplitConfig) -> tuple[Split, SplitConfig, dict[str, str] | None]:
    """The split of a store whose manifest records one (custom data, :mod:`fedmlp.sources.custom`): the labels CSV's split column as given (its val rows the validation
    set, ``split.val_fraction`` not applied: the training rows may hold empty cells), else the seeded
    random split, by patient when the CSV has a patient column. Returns the split, the settings it
    followed, and the image → patient map for the validation set carved next."""
    splits, patients = manifest.get("splits"), manifest.get("patients")
    if splits:
        split = Split(**{name: [i for i in image_ids if splits[i] == name] for name in ("train", "test", "val")})
        if not split.train or not split.test:
            empty = "train" if not split.train else "test"
            raise FedmlpError(f"{manifest.get('labels_file')}: column 'split' names no {empty} image")
        return split, dataclasses.replace(config, val_fraction=0.0), patients
    if patients:
        return patient_split(image_ids, patients, config), config, patients
    return random_split(image_ids, config), config, None


def official_split(image_ids: list[str], train_list: list[str], test_list: list[str]) -> Split:
    """ChestX-ray14's patient-level split (``train_val_list.txt`` / ``test_list.txt``), kept to the given images."""
    train, test = set(train_list), set(test_list)
    if train & test:
        raise FedmlpError(f"the official split lists share {len(train & test)} images (first: {printable(sorted(train & test)[0])})")
    return Split(train=[i for i in image_ids if i in train], test=[i for i in image_ids if i in test])


def validation_size(n_train: int, val_fraction: float) -> int:
    """How many of ``n_train`` training images ``split.val_fraction`` asks for (rounded); a fraction
    above 0 that rounds to no image is refused rather than silently giving no validation set."""
    if not 0 <= val_fraction < 1:
        raise FedmlpError(f"config key 'split.val_fraction': expected a number in [0, 1), got {val_fraction}")
    n_val = round(val_fraction * n_train)
    if val_fraction > 0 and n_val < 1:
        raise FedmlpError(f"config key 'split.val_fraction': {val_fraction} of {n_train} training images is no validation image; "
                          "use a larger fraction, or 0 for no validation set")
    return n_val


def check_room_for_clients(n_train: int, n_val: int, n_clients: int) -> None:
    """Refuse, naming ``split.val_fraction``, a validation set that takes the images the clients need
    (too few images without it is ``federation.n_clients``'s error, :func:`partition`)."""
    needed = n_clients * MIN_CLIENT_IMAGES
    if n_val and n_train < needed <= n_train + n_val:
        raise FedmlpError(f"config key 'split.val_fraction': its {n_val} validation images leave {n_train} training images, "
                          f"fewer than the {needed} that federation.n_clients {n_clients} needs")


def carve_validation(split: Split, config: SplitConfig, groups: Mapping[str, str] | None = None) -> Split:
    """Move ``split.val_fraction`` of the training images to the validation set, drawn from
    ``split.seed`` on a stream of its own (the train/test split stays the paper's whatever the
    fraction). With ``groups`` (image → patient), whole patients move, in a random order until the
    fraction is reached, so that no patient is on both sides. Both lists keep the training list's order."""
    target = validation_size(len(split.train), config.val_fraction)
    if target == 0:
        return split
    members: dict[str, list[str]] = {}
    for image in split.train:
        members.setdefault(groups.get(image, image) if groups else image, []).append(image)
    names = list(members)
    chosen: set[str] = set()
    for index in numpy_rng(config.seed, "validation").permutation(len(names)):
        if len(chosen) >= target:
            break
        chosen.update(members[names[index]])
    if len(chosen) == len(split.train):
        raise FedmlpError(f"config key 'split.val_fraction': {config.val_fraction} leaves no training images "
                          f"(all {len(split.train)} go to the validation set)")
    return Split(train=[i for i in split.train if i not in chosen], test=split.test, val=[i for i in split.train if i in chosen])


def paper_clients(n_train: int, n_clients: int, seed: int, images_per_client: int | None) -> list[list[int]]:
    """The paper code's client sampler, operation for operation (docs/data.md).

    ``numpy.random.seed(seed)``; each client draws ``n_train // n_clients`` positions of the pool without
    replacement, keeps them as a set, and the pool becomes ``list(set(pool) - chosen)``; the client's
    list is ``list(chosen)``. With ``images_per_client`` (ICH: 5,000), ``random.seed(seed)`` and one
    ``random.sample`` per client, in order. Returns positions in the training list."""
    state = np.random.RandomState(seed)  # the same stream as numpy.random.seed(seed) + numpy.random.choice
    pool: list[int] = list(range(n_train))
    size = n_train // n_clients
    clients = []
    for _ in range(n_clients):
        chosen = set(state.choice(pool, size, replace=False))
        pool = list(set(pool) - chosen)
        clients.append(list(chosen))
    if images_per_client is not None:
        if images_per_client > size:
            raise FedmlpError(f"config key 'federation.images_per_client': {images_per_client} is more than the {size} images each client draws")
        sampler = random.Random(seed)  # the same stream as random.seed(seed) + random.sample
        clients = [sampler.sample(client, images_per_client) for client in clients]
    return [[int(i) for i in client] for client in clients]


def assign_classes(classes: list[str], config: FederationConfig) -> list[list[str]]:
    """Annotated classes per client: listed explicitly, or drawn so that every class has an annotator."""
    k, per_client = config.n_clients, config.annotated_per_client
    if config.annotated_classes is not None:
        listed = config.annotated_classes
        if len(listed) != k:
            raise FedmlpError(f"config key 'federation.annotated_classes': {len(listed)} lists for {k} clients")
        for i, names in enumerate(listed):
            unknown = [c for c in names if c not in classes]
            if unknown:
                raise FedmlpError(f"config key 'federation.annotated_classes[{i}]': unknown class {unknown[0]!r} (classes: {', '.join(classes)})")
        orphans = [c for c in classes if not any(c in names for names in listed)]
        if orphans:
            raise FedmlpError(f"config key 'federation.annotated_classes': no client annotates {orphans[0]!r}")
        return [[c for c in classes if c in names] for names in listed]
    if not 1 <= per_client <= len(classes):
        raise FedmlpError(f"config key 'federation.annotated_per_client': expected 1..{len(classes)} (the number of classes), got {per_client}")
    if k * per_client < len(classes):
        raise FedmlpError(
            f"config key 'federation.annotated_per_client': {k} clients × {per_client} classes cannot cover {len(classes)} classes"
        )
    order = numpy_rng(config.seed, "annotated-classes").permutation(len(classes))
    assigned = []
    for client in range(k):
        picks = {int(order[(client * per_client + j) % len(classes)]) for j in range(per_client)}
        assigned.append([classes[i] for i in sorted(picks)])
    return assigned


def _dirichlet_groups(labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Label-skewed split for multi-label data: each image is grouped by its rarest positive class
    (or "no finding"), and each group is divided among clients by proportions drawn from Dir(alpha)."""
    prevalence = labels.mean(axis=0)
    rarity = np.where(labels > 0, prevalence[None, :], np.inf)
    group = np.where(labels.any(axis=1), rarity.argmin(axis=1), labels.shape[1])
    for _ in range(100):
        shares: list[list[int]] = [[] for _ in range(k)]
        for g in np.unique(group):
            members = rng.permutation(np.flatnonzero(group == g))
            cuts = (np.cumsum(rng.dirichlet([alpha] * k)) * len(members)).astype(int)[:-1]
            for client, part in enumerate(np.split(members, cuts)):
                shares[client].extend(part.tolist())
        if min(len(s) for s in shares) >= MIN_CLIENT_IMAGES:
            return [np.sort(np.array(s, dtype=int)) for s in shares]
    raise FedmlpError(f"config key 'federation.dirichlet_alpha': {alpha} leaves a client without images after 100 draws; use a larger alpha")


def partition(train_ids: list[str], train_labels: np.ndarray | None, classes: list[str], config: FederationConfig) -> list[dict[str, Any]]:
    """Divide the training images among clients and give each its annotated classes.
    ``train_labels`` is needed by ``dirichlet`` only."""
    n, k = len(train_ids), config.n_clients
    if k < 1:
        raise FedmlpError(f"config key 'federation.n_clients': expected at least 1, got {k}")
    if n < k * MIN_CLIENT_IMAGES:
        raise FedmlpError(f"config key 'federation.n_clients': {k} clients need at least {k * MIN_CLIENT_IMAGES} training images, have {n}")
    annotated = assign_classes(classes, config)
    if config.images_per_client is not None and config.partition != "paper":
        raise FedmlpError("config key 'federation.images_per_client': only used by partition 'paper'; set it to null")
    rng = numpy_rng(config.seed, "partition", config.partition)
    if config.partition == "paper":
        parts = paper_clients(n, k, config.seed, config.images_per_client)
    elif config.partition == "iid":
        parts = [np.sort(p) for p in np.array_split(rng.permutation(n), k)]
    elif config.partition == "dirichlet":
        if config.dirichlet_alpha <= 0:
            raise FedmlpError(f"config key 'federation.dirichlet_alpha': expected a positive number, got {config.dirichlet_alpha}")
        parts = _dirichlet_groups(train_labels, k, config.dirichlet_alpha, rng)
    else:
        raise FedmlpError(f"config key 'federation.partition': {config.partition!r} is not one of iid, dirichlet, paper")
    return [
        {"id": client, "images": [train_ids[i] for i in part], "annotated_classes": annotated[client]}
        for client, part in enumerate(parts)
    ]


def partition_artifact(classes: list[str], clients: list[dict[str, Any]], test: list[str], config: FederationConfig,
                       val: list[str] | None = None) -> dict[str, Any]:
    return {"classes": classes, "clients": clients, "test": test, **({"val": val} if val else {}), "meta": {"federation": to_dict(config)}}


def keep_stored(artifact: dict[str, Any], stored: set[str]) -> dict[str, Any]:
    """Drop images the store does not hold (unreadable at ingest) from a partition defined on the
    source, and record how many went: the partition stays the paper's for everything else."""
    held = [key for key in ("test", "val") if key in artifact]
    dropped = {key: sum(i not in stored for i in artifact[key]) for key in held}
    for client in artifact["clients"]:
        dropped[f"client {client['id']}"] = sum(i not in stored for i in client["images"])
        client["images"] = [i for i in client["images"] if i in stored]
    for key in held:
        artifact[key] = [i for i in artifact[key] if i in stored]
    artifact["meta"]["dropped_unreadable"] = dropped
    return artifact


# --- reading split.json and partition.json back: hand-made files are checked, not trusted -----------

def check_split(data: Any, path: Path, known: list[str]) -> Split:
    """``split.json``: distinct train and test IDs, both non-empty, and validation IDs if any; the
    three lists disjoint, all among ``known`` (the store's candidates)."""
    require(isinstance(data, dict) and "train" in data and "test" in data, path, "not a split (expected a JSON object with train and test)")
    train, test = id_list(data["train"], path, "train"), id_list(data["test"], path, "test")
    val = id_list(data["val"], path, "val", allow_empty=True) if "val" in data else []
    lists = {"train": train, "val": val, "test": test}
    for a, b in (("train", "test"), ("val", "test"), ("train", "val")):
        shared = set(lists[a]) & set(lists[b])
        leak = "test" if b == "test" else "validation"
        require(not shared, path, f"image {min(shared) if shared else ''!r} is in both {a} and {b} ({leak} leakage)")
    names = set(known)
    unknown = next((i for i in train + val + test if i not in names), None)
    require(unknown is None, path, f"image {unknown!r} is not in the store")
    return Split(train=train, test=test, val=val)


def check_partition(data: Any, path: Path, classes: list[str], stored: set[str]) -> dict[str, Any]:
    """``partition.json``: the store's classes; clients with distinct IDs, at least one image each,
    on no other client and not in the test or validation set, annotating known classes (every class by
    one client at least); a non-empty test set, a validation set (if any) apart from it; every image in
    the store."""
    require(isinstance(data, dict) and all(k in data for k in ("classes", "clients", "test")), path,
            "not a partition (expected a JSON object with classes, clients and test)")
    listed = id_list(data["classes"], path, "classes")
    require(listed == classes, path, f"classes {listed} do not match the store's {classes}")
    test = id_list(data["test"], path, "test")
    val = id_list(data["val"], path, "val", allow_empty=True) if "val" in data else []
    shared = set(val) & set(test)
    require(not shared, path, f"image {min(shared) if shared else ''!r} is in both val and test (test leakage)")
    clients = data["clients"]
    require(isinstance(clients, list) and bool(clients), path, "clients: expected a non-empty list")
    owner: dict[str, int] = {**dict.fromkeys(test, TEST_OWNER), **dict.fromkeys(val, VAL_OWNER)}
    annotated_somewhere: set[str] = set()
    for index, client in enumerate(clients):
        require(isinstance(client, dict) and all(k in client for k in ("id", "images", "annotated_classes")), path,
                f"clients[{index}]: expected an object with id, images and annotated_classes")
        cid = client["id"]
        require(isinstance(cid, int) and not isinstance(cid, bool) and cid >= 0, path, f"clients[{index}]: id {cid!r} is not a client number")
        require(all(c["id"] != cid for c in clients[:index]), path, f"client {cid} is listed twice")
        annotated = id_list(client["annotated_classes"], path, f"client {cid} annotated_classes")
        unknown = [c for c in annotated if c not in classes]
        require(not unknown, path, f"client {cid} annotates {unknown[0] if unknown else ''!r}, which is not one of the classes {classes}")
        annotated_somewhere.update(annotated)
        for image in id_list(client["images"], path, f"client {cid} images"):
            if image in owner:
                where = {TEST_OWNER: "the test set (test leakage)", VAL_OWNER: "the validation set (validation leakage)"}.get(
                    owner[image], f"client {owner[image]} too")
                raise FedmlpError(f"{path}: image {image!r} of client {cid} is also in {where}")
            owner[image] = cid
    orphan = [c for c in classes if c not in annotated_somewhere]
    require(not orphan, path, f"no client annotates {orphan[0] if orphan else ''!r}")
    missing = next((i for i in owner if i not in stored), None)
    require(missing is None, path, f"image {missing!r} is not in the store")
    return data


def read_partition(path: Path, store: ImageStore) -> dict[str, Any]:
    return check_partition(read_json(path), path, store.classes, set(store.image_ids))


def read_split(path: Path, store: ImageStore) -> Split:
    return check_split(read_json(path), path, store.candidates())
