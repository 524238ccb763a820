"""The ``fedmlp`` command. Snakemake rules call these subcommands; each is a thin wrapper.

Settings arrive as JSON (the config section a rule depends on) so that what Snakemake tracks as
``params`` is exactly what the stage uses. Every user-fixable problem exits with status 2 and one
line naming the file or config key.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from fedmlp.errors import FedmlpError

log = logging.getLogger("fedmlp")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FedmlpError(f"{path}: cannot read JSON ({exc})") from None


def cmd_synth(args: argparse.Namespace) -> None:
    from fedmlp.config import SyntheticConfig, from_json
    from fedmlp.sources import synthetic

    synthetic.generate(from_json(SyntheticConfig, args.settings, "synthetic"), args.out)


def cmd_ingest(args: argparse.Namespace) -> None:
    from fedmlp.config import PreprocessConfig, from_json
    from fedmlp.ingest import ingest_ich

    ingest_ich(args.raw, args.out, from_json(PreprocessConfig, args.settings, "preprocess"), args.dataset, workers=args.workers)


def cmd_split(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_json
    from fedmlp.config import SplitConfig, from_json, to_dict
    from fedmlp.partition import random_split
    from fedmlp.store import ImageStore

    config = from_json(SplitConfig, args.settings, "split")
    split = random_split(ImageStore.open(args.store).image_ids, config)
    write_json(args.out, {**split.to_json(), "meta": {"split": to_dict(config)}})
    log.info("split: %d train, %d test images", len(split.train), len(split.test))


def cmd_partition(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_json
    from fedmlp.config import FederationConfig, from_json
    from fedmlp.partition import partition, partition_artifact
    from fedmlp.store import ImageStore

    config = from_json(FederationConfig, args.settings, "federation")
    store = ImageStore.open(args.store)
    split = _read_json(args.split)
    labels = store.labels[store.rows(split["train"])]
    clients = partition(split["train"], labels, store.classes, config)
    write_json(args.out, partition_artifact(store.classes, clients, split["test"], config))
    for client in clients:
        log.info("client %d: %d images, annotates %s", client["id"], len(client["images"]), ", ".join(client["annotated_classes"]))


def cmd_train(args: argparse.Namespace) -> None:
    import csv

    from fedmlp import checkpoint, federated, methods, runtime
    from fedmlp.atomic import atomic_path
    from fedmlp.config import ModelConfig, TrainConfig, from_json, to_dict
    from fedmlp.store import ImageStore

    train = from_json(TrainConfig, args.train, "train")
    model_config = from_json(ModelConfig, args.model, "model")
    method = methods.create(args.method, json.loads(args.method_settings))
    if train.rounds < 1:
        raise FedmlpError(f"config key 'train.rounds': expected at least 1, got {train.rounds}")
    rt = runtime.resolve(train.device, train.precision, train.threads)
    store = ImageStore.open(args.store)
    model, history = federated.run(store, _read_json(args.partition), method, train, model_config, args.seed, rt)
    rows = federated.history_rows(history)
    with atomic_path(args.out_rounds) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "model": to_dict(model_config),
        "classes": store.classes,
        "method": args.method,
        "seed": args.seed,
        "rounds": train.rounds,
        "precision": rt.precision,
    }
    checkpoint.save(args.out_model, model, meta)


def cmd_evaluate(args: argparse.Namespace) -> None:
    import pandas as pd

    from fedmlp import checkpoint, runtime
    from fedmlp.atomic import atomic_path, write_json
    from fedmlp.inference import predict_proba
    from fedmlp.metrics import evaluate
    from fedmlp.store import ImageStore

    store = ImageStore.open(args.store)
    model, meta = checkpoint.load(args.model)
    if meta["classes"] != store.classes:
        raise FedmlpError(f"{args.model}: trained for classes {meta['classes']}, the store has {store.classes}")
    test_ids = _read_json(args.partition)["test"]
    rows = store.rows(test_ids)
    rt = runtime.resolve(args.device, "fp32", args.threads)
    probs = predict_proba(model.to(rt.device), store, rows, rt)
    result = evaluate(store.labels[rows], probs, store.classes)
    rounds = pd.read_csv(args.rounds)
    result["run"] = json.loads(args.run)
    result["rounds"] = rounds[["round", "test_mAP", "test_AUROC"]].to_dict(orient="list")
    write_json(args.out_metrics, result)
    frame = pd.DataFrame(probs, columns=store.classes)
    frame.insert(0, "image_id", test_ids)
    with atomic_path(args.out_predictions) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")
    log.info("test mAP %.4f, AUROC %.4f over %d images", result["overall"]["mAP"], result["overall"]["AUROC"], len(rows))


def cmd_report(args: argparse.Namespace) -> None:
    from fedmlp.report import write_report

    write_report([_read_json(p) for p in args.metrics], args.summary, args.report, args.figure)


def cmd_dicom2png(args: argparse.Namespace) -> None:
    from fedmlp.atomic import atomic_path
    from fedmlp.dicom import read_ct
    from fedmlp.windowing import resize, to_pil, to_uint8, window

    image = to_uint8(resize(window(read_ct(args.input), args.windowing, str(args.input)), args.size))
    with atomic_path(args.output) as tmp:
        to_pil(image).save(tmp, format="PNG")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmlp", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("synth", cmd_synth, "write the synthetic head-CT dataset in the RSNA ICH layout")
    p.add_argument("--settings", default="{}", help="JSON of the 'synthetic' config section")
    p.add_argument("--out", type=Path, required=True, help="directory to write stage_2_train/ and stage_2_train.csv into")

    p = add("ingest", cmd_ingest, "decode, window and resize a raw dataset into an image store")
    p.add_argument("--raw", type=Path, required=True, help="directory in the Kaggle RSNA layout")
    p.add_argument("--out", type=Path, required=True, help="store directory to create")
    p.add_argument("--dataset", default="synthetic-ich")
    p.add_argument("--settings", default="{}", help="JSON of the 'preprocess' config section")
    p.add_argument("--workers", type=int, default=1, help="decoding processes")

    p = add("split", cmd_split, "seeded image-level train/test split of a store")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--settings", default="{}", help="JSON of the 'split' config section")
    p.add_argument("--out", type=Path, required=True)

    p = add("partition", cmd_partition, "divide the training images among clients and assign annotated classes")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--settings", default="{}", help="JSON of the 'federation' config section")
    p.add_argument("--out", type=Path, required=True)

    p = add("train", cmd_train, "federated training of one method with one seed")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--partition", type=Path, required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--train", default="{}", help="JSON of the 'train' config section")
    p.add_argument("--model", default="{}", help="JSON of the 'model' config section")
    p.add_argument("--method-settings", default="{}", help="JSON of the method's own config section")
    p.add_argument("--out-model", type=Path, required=True)
    p.add_argument("--out-rounds", type=Path, required=True)

    p = add("evaluate", cmd_evaluate, "score a checkpoint on the fully labelled test set")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--partition", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--rounds", type=Path, required=True, help="the training run's per-round CSV")
    p.add_argument("--run", default="{}", help="JSON identifying the run: dataset, setting, method, seed")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-metrics", type=Path, required=True)
    p.add_argument("--out-predictions", type=Path, required=True)

    p = add("report", cmd_report, "summary.csv, report.md and the per-round plot from metrics files")
    p.add_argument("metrics", type=Path, nargs="+")
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--figure", type=Path, required=True)

    p = add("dicom2png", cmd_dicom2png, "window one DICOM file into a PNG (RGB for bsb, grayscale for header)")
    p.add_argument("--windowing", choices=["bsb", "header"], required=True)
    p.add_argument("--size", type=int, default=None, help="output size in pixels (default: native)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except FedmlpError as exc:
        print(f"fedmlp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedmlp {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
