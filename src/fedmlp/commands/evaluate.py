"""``fedmlp evaluate``: a checkpoint's final-round metrics on the fully labelled test set."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedmlp.commands.common import count, parse_json_option
from fedmlp.errors import FedmlpError

log = logging.getLogger("fedmlp")
ROUND_COLUMNS = ("round", "test_mAP", "test_AUROC")  # of the training run's rounds.csv


def cmd_evaluate(args: argparse.Namespace) -> None:
    import pandas as pd

    from fedmlp import checkpoint, runtime
    from fedmlp.atomic import atomic_path, write_json
    from fedmlp.inference import predict_proba
    from fedmlp.inputs import read_csv
    from fedmlp.metrics import evaluate
    from fedmlp.partition import read_partition
    from fedmlp.store import ImageStore

    run = parse_json_option(args.run, "--run")
    if not isinstance(run, dict):
        raise FedmlpError(f"--run: expected a JSON object (dataset, setting, method, seed), got {args.run!r}")
    store = ImageStore.open(args.store, verify_images=True)
    test_ids = read_partition(args.partition, store)["test"]
    rounds = read_csv(args.rounds, ROUND_COLUMNS, numeric=ROUND_COLUMNS, allow_nan=ROUND_COLUMNS[1:])
    model, meta = checkpoint.load(args.model)
    if meta["classes"] != store.classes:
        raise FedmlpError(f"{args.model}: trained for classes {meta['classes']}, the store has {store.classes}")
    rows = store.rows(test_ids)
    rt = runtime.resolve(args.device, "fp32", args.threads)
    probs = predict_proba(model.to(rt.device), store, rows, rt)
    result = evaluate(store.labels[rows], probs, store.classes)
    result["run"] = run
    result["rounds"] = rounds[list(ROUND_COLUMNS)].to_dict(orient="list")
    write_json(args.out_metrics, result)
    frame = pd.DataFrame(probs, columns=store.classes)
    frame.insert(0, "image_id", test_ids)
    with atomic_path(args.out_predictions) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")
    log.info("test mAP %.4f, AUROC %.4f over %d images", result["overall"]["mAP"], result["overall"]["AUROC"], len(rows))


def add_commands(add) -> None:
    p = add("evaluate", cmd_evaluate, "score a checkpoint on the fully labelled test set")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--partition", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--rounds", type=Path, required=True, help="the training run's per-round CSV")
    p.add_argument("--run", default="{}", help="JSON identifying the run: dataset, setting, method, seed")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=count(1, 1024), default=1)
    p.add_argument("--out-metrics", type=Path, required=True)
    p.add_argument("--out-predictions", type=Path, required=True)
