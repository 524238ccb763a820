"""``fedmlp split``, ``fedmlp partition`` and ``fedmlp paper-split``: who trains on which images."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedmlp.commands.common import count, declare_paths
from fedmlp.errors import FedmlpError

log = logging.getLogger("fedmlp")


def cmd_split(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_json
    from fedmlp.config import SplitConfig, from_json, to_dict
    from fedmlp.partition import carve_validation, manifest_split, official_split, random_split
    from fedmlp.sources import nih
    from fedmlp.store import ImageStore

    config = from_json(SplitConfig, args.settings, "split")
    store = ImageStore.open(args.store)
    candidates = store.candidates()  # source order, unreadable images included
    patients = None
    if config.method == "official":
        if args.raw is None:
            raise FedmlpError("config key 'split.method': 'official' needs the split lists (--raw DIR; ChestX-ray14 only)")
        lists = [nih.read_list(args.raw / name) for name in nih.SPLIT_FILES]
        split = official_split(candidates, *lists)
        if config.val_fraction > 0:  # the official split is by patient: so is the validation set
            patients = nih.patients(nih.read_data_entry(args.raw / nih.LABEL_FILE))
    elif store.manifest.get("dataset") == "custom":  # the labels CSV's split column, else by its patients (if any)
        split, config, patients = manifest_split(store.manifest, candidates, config)
    else:
        split = random_split(candidates, config)
    split = carve_validation(split, config, patients)
    settings = to_dict(config)
    if not split.val:  # no validation set: the split.json of before split.val_fraction existed, byte for byte
        del settings["val_fraction"]
    write_json(args.out, {**split.to_json(), "meta": {"split": settings}})
    log.info("split (%s): %d train, %d validation, %d test images", config.method, len(split.train), len(split.val), len(split.test))


def cmd_partition(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_json
    from fedmlp.config import FederationConfig, from_json
    from fedmlp.partition import (
        check_partition,
        check_room_for_clients,
        keep_stored,
        partition,
        partition_artifact,
        read_split,
        site_clients,
    )
    from fedmlp.sources.custom import check_assessed
    from fedmlp.store import ImageStore

    config = from_json(FederationConfig, args.settings, "federation")
    store = ImageStore.open(args.store)
    split = read_split(args.split, store)  # train is already without the validation images
    stored = set(store.image_ids)
    # The paper's sampler works on positions in the split's training list, unreadable images included.
    train = split.train if config.partition == "paper" else [i for i in split.train if i in stored]
    if config.partition == "site":
        sites = store.manifest.get("sites")
        if not isinstance(sites, dict):
            raise FedmlpError("config key 'federation.partition': site needs dataset custom with a 'site' column in its labels CSV")
        clients = site_clients(train, sites, store.classes, store.manifest.get("unassessed") or {})
        check_room_for_clients(len(train), len(split.val), len(clients))
    else:
        check_assessed(store.manifest, f"config key 'federation.partition': {config.partition}")
        check_room_for_clients(len(train), len(split.val), config.n_clients)
        labels = store.labels[store.rows(train)] if config.partition == "dirichlet" else None
        clients = partition(train, labels, store.classes, config)
    artifact = keep_stored(partition_artifact(store.classes, clients, split.test, config, split.val), stored)
    check_partition(artifact, args.out, store.classes, stored)  # e.g. a client left without images that the store holds
    write_json(args.out, artifact)
    for client in artifact["clients"]:
        log.info("client %d: %d images, annotates %s", client["id"], len(client["images"]), ", ".join(client["annotated_classes"]))


def cmd_paper_split(args: argparse.Namespace) -> None:
    """The paper's ChestX-ray14 split and partition from the label file alone."""
    from fedmlp.atomic import write_json
    from fedmlp.config import FederationConfig, SplitConfig
    from fedmlp.partition import partition, partition_artifact, random_split
    from fedmlp.sources import nih

    classes = args.classes.split(",") if args.classes else list(nih.CHESTXRAY8)
    if len(classes) > args.clients:
        raise FedmlpError(f"--classes: {len(classes)} classes for {args.clients} clients; each client annotates one")
    ids = nih.pa_rows(nih.read_data_entry(args.data_entry))["Image Index"].tolist()
    split = random_split(ids, SplitConfig(method="paper", train_fraction=0.7, seed=2023))
    config = FederationConfig(n_clients=args.clients, partition="paper", seed=1037,
                              annotated_classes=[[classes[k % len(classes)]] for k in range(args.clients)])
    clients = partition(split.train, None, classes, config)
    write_json(args.out / "partition.json", partition_artifact(classes, clients, split.test, config))
    log.info("paper split: %d train, %d test; %d clients × %d images -> %s", len(split.train), len(split.test),
             len(clients), len(clients[0]["images"]), args.out / "partition.json")


def add_commands(add) -> None:
    p = add("split", cmd_split, "train/validation/test split of a store: the paper's random one, or ChestX-ray14's official lists")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--settings", default="{}", metavar="JSON",
                   help="""the 'split' config section, e.g. '{"method": "paper", "train_fraction": 0.7, "seed": 2023}'""")
    p.add_argument("--raw", type=Path, default=None, help="raw directory holding the official split lists")
    p.add_argument("--out", type=Path, required=True)
    declare_paths(p, ["--store", "--raw"], ["--out"])

    p = add("partition", cmd_partition, "divide the training images among clients and assign annotated classes")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--settings", default="{}", metavar="JSON",
                   help="""the 'federation' config section, e.g. '{"n_clients": 5, "partition": "iid", "annotated_per_client": 1}'""")
    p.add_argument("--out", type=Path, required=True)
    declare_paths(p, ["--store", "--split"], ["--out"])

    p = add("paper-split", cmd_paper_split, "the paper's exact split and client partition, from the label file alone")
    p.add_argument("dataset", choices=["chestxray14"])
    p.add_argument("--data-entry", type=Path, required=True, help="Data_Entry_2017_v2020.csv (or .csv.gz)")
    p.add_argument("--out", type=Path, required=True, help="directory for partition.json")
    p.add_argument("--clients", type=count(1, 10_000), default=8)
    p.add_argument("--classes", default=None, help="comma-separated classes, client k annotating class k (default: the ChestX-ray8 eight)")
    declare_paths(p, ["--data-entry"], ["--out"])
