"""``fedmlp evaluate``: a checkpoint's final-round metrics on the fully labelled test set (also the
last step of every training command in the workflow, :func:`score`).

``metrics.json``: ``overall`` and ``per_class`` are the final model's test scores (the reported
result); ``thresholds`` are the per-class cut-offs of the thresholded metrics, chosen on the
validation set (``threshold_source: validation``) or 0.5 without one (``fixed``); ``best_val`` is the
round with the best validation mAP and its test scores (null without a validation set); ``rounds``
the per-round curves; ``compute`` (from the training commands only) the run's counted model passes
per training image per round and its cost in forward-equivalents (:mod:`fedmlp.compute`);
``gates`` (training commands only, for methods with a gate) how often each of
the method's gates passed, per round and client or server unit (:func:`fedmlp.federated.gate_rows`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fedmlp.commands.common import count, declare_paths, parse_json_option
from fedmlp.errors import FedmlpError

log = logging.getLogger("fedmlp")
ROUND_COLUMNS = ("round", "test_mAP", "test_AUROC", "val_mAP", "val_AUROC")  # of the training run's rounds.csv


def score(model, store, partition: dict, rounds: list[dict], run: dict, device: str, threads: int,
          out_metrics: Path, out_predictions: Path, warnings: list[str] = (), compute: dict | None = None,
          gates: list[dict] = ()) -> dict:
    """Metrics and per-image probabilities of a trained model on the partition's test images, with
    thresholds chosen on its validation images, in fp32 whatever the training precision (so methods
    are scored alike). The training commands call it on the model they have just saved, which spares
    the pipeline one job start-up per run, and pass the method's ``warnings`` (a ``warnings`` list in
    the metrics, absent when there are none), the run's ``compute`` and its gate rates per round (``gates``:
    rows of :data:`fedmlp.federated.GATE_FIELDS`, absent for a method without a gate)."""
    import pandas as pd

    from fedmlp import runtime
    from fedmlp.atomic import atomic_path, write_json
    from fedmlp.inference import predict_proba
    from fedmlp.metrics import best_val_round, evaluate, f1_thresholds, undefined_warnings

    test_ids, val_ids = partition["test"], partition.get("val", [])
    rt = runtime.resolve(device, "fp32", threads)
    model = model.to(rt.device)
    thresholds = None
    if val_ids:
        val_rows = store.rows(val_ids)
        thresholds = f1_thresholds(store.labels[val_rows], predict_proba(model, store, val_rows, rt), store.classes)
    rows = store.rows(test_ids)
    probs = predict_proba(model, store, rows, rt)
    result = evaluate(store.labels[rows], probs, store.classes, thresholds)
    for message in undefined_warnings(result):  # metrics.json lists them (undefined_classes); the report says so per setting
        log.warning("%s", message)
    result["threshold_source"] = "validation" if val_ids else "fixed"
    result["best_val"] = best_val_round(rounds)
    result["run"] = run
    result["rounds"] = {column: [row[column] for row in rounds] for column in ROUND_COLUMNS}
    if warnings:
        result["warnings"] = list(warnings)
    if compute is not None:
        result["compute"] = compute
    if gates:
        result["gates"] = list(gates)
    frame = pd.DataFrame(probs, columns=store.classes)
    frame.insert(0, "image_id", test_ids)
    with atomic_path(out_predictions) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")
    write_json(out_metrics, result)
    log.info("test mAP %.4f, AUROC %.4f over %d images", result["overall"]["mAP"], result["overall"]["AUROC"], len(rows))
    return result


def parse_run(text: str) -> dict:
    run = parse_json_option(text, "--run")
    if not isinstance(run, dict):
        raise FedmlpError(f"--run: expected a JSON object (dataset, setting, method, seed), got {text!r}")
    return run


def cmd_evaluate(args: argparse.Namespace) -> None:
    from fedmlp import checkpoint
    from fedmlp.inputs import read_csv
    from fedmlp.partition import read_partition
    from fedmlp.store import ImageStore

    run = parse_run(args.run)
    store = ImageStore.open(args.store, require_verified=True)
    partition = read_partition(args.partition, store)
    rounds = read_csv(args.rounds, ROUND_COLUMNS, numeric=ROUND_COLUMNS, allow_nan=ROUND_COLUMNS[1:])
    model, meta = checkpoint.load(args.model)
    if meta["classes"] != store.classes:
        raise FedmlpError(f"{args.model}: trained for classes {meta['classes']}, the store has {store.classes}")
    score(model, store, partition, rounds.to_dict(orient="records"), run, args.device, args.threads, args.out_metrics, args.out_predictions)


def add_commands(add) -> None:
    p = add("evaluate", cmd_evaluate, "score a checkpoint on the fully labelled test set (thresholds from the validation set)")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--partition", type=Path, required=True, help="partition JSON: its test images are scored, its validation images set the thresholds")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--rounds", type=Path, required=True, help="the training run's per-round CSV")
    p.add_argument("--run", default="{}", metavar="JSON", help="the run's identity, e.g. "
                   '\'{"dataset": "synthetic-ich", "setting": "iid-k5-a1", "method": "fedavg-masked", "seed": 0}\'')
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=count(1, 1024), default=1)
    p.add_argument("--out-metrics", type=Path, required=True)
    p.add_argument("--out-predictions", type=Path, required=True)
    declare_paths(p, ["--store", "--partition", "--model", "--rounds"], ["--out-metrics", "--out-predictions"])
