"""The ``fedmlp`` command. Snakemake rules call these subcommands; each is a thin wrapper.

Settings arrive as JSON (the config section a rule depends on) so that what Snakemake tracks as
``params`` is exactly what the stage uses. Every user-fixable problem exits with status 2 and one
line naming the file or config key.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from fedmlp.errors import FedmlpError, describe_os_error, one_line

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


def cmd_download(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_text
    from fedmlp.config import ChestXray14Config, IchConfig, from_json

    if args.dataset == "ich":
        from fedmlp.sources import kaggle

        kaggle.download(args.out, from_json(IchConfig, args.settings, "ich"))
    else:
        from fedmlp.sources import nih

        nih.download(args.out, from_json(ChestXray14Config, args.settings, "chestxray14"))
    if args.done is not None:
        write_text(args.done, f"{args.dataset} downloaded into {args.out}\n")


def cmd_ingest(args: argparse.Namespace) -> None:
    from fedmlp.config import ChestXray14Config, PreprocessConfig, from_json
    from fedmlp.ingest import ingest_chestxray14, ingest_ich

    preprocess = from_json(PreprocessConfig, args.settings, "preprocess")
    if args.dataset == "chestxray14":
        source = from_json(ChestXray14Config, args.source_settings, "chestxray14")
        ingest_chestxray14(args.raw, args.out, preprocess, source.classes, workers=args.workers, report=args.report)
    else:
        ingest_ich(args.raw, args.out, preprocess, args.dataset, workers=args.workers, report=args.report)


def cmd_split(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_json
    from fedmlp.config import SplitConfig, from_json, to_dict
    from fedmlp.partition import official_split, random_split
    from fedmlp.sources import nih
    from fedmlp.store import ImageStore

    config = from_json(SplitConfig, args.settings, "split")
    candidates = ImageStore.open(args.store).candidates()  # source order, unreadable images included
    if config.method == "official":
        if args.raw is None:
            raise FedmlpError("config key 'split.method': 'official' needs the split lists (--raw DIR; ChestX-ray14 only)")
        lists = [nih.read_list(args.raw / name) for name in nih.SPLIT_FILES]
        split = official_split(candidates, *lists)
    else:
        split = random_split(candidates, config)
    write_json(args.out, {**split.to_json(), "meta": {"split": to_dict(config)}})
    log.info("split (%s): %d train, %d test images", config.method, len(split.train), len(split.test))


def cmd_partition(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_json
    from fedmlp.config import FederationConfig, from_json
    from fedmlp.partition import keep_stored, partition, partition_artifact
    from fedmlp.store import ImageStore

    config = from_json(FederationConfig, args.settings, "federation")
    store = ImageStore.open(args.store)
    split = _read_json(args.split)
    stored = set(store.image_ids)
    # The paper's sampler works on positions in the split's training list, unreadable images included.
    train = split["train"] if config.partition == "paper" else [i for i in split["train"] if i in stored]
    labels = store.labels[store.rows(train)] if config.partition == "dirichlet" else None
    clients = partition(train, labels, store.classes, config)
    artifact = keep_stored(partition_artifact(store.classes, clients, split["test"], config), stored)
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


def _training_inputs(args: argparse.Namespace):
    """Store, partition, method, settings and runtime shared by the training commands."""
    from fedmlp import methods, runtime
    from fedmlp.config import ModelConfig, TrainConfig, from_json
    from fedmlp.store import ImageStore

    train = from_json(TrainConfig, args.train, "train")
    model_config = from_json(ModelConfig, args.model, "model")
    try:
        settings = json.loads(args.method_settings)
    except json.JSONDecodeError as exc:
        raise FedmlpError(f"--method-settings is not valid JSON: {exc}") from None
    method = methods.create(args.method, settings)
    rt = runtime.resolve(train.device, train.precision, train.threads, train.deterministic)
    return ImageStore.open(args.store), _read_json(args.partition), method, train, model_config, rt


def _write_rounds(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    from fedmlp.atomic import atomic_path

    with atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def _save_model(path: Path, model, store, args: argparse.Namespace, model_config, precision: str, rounds: int) -> None:
    from fedmlp import checkpoint
    from fedmlp.config import to_dict

    meta = {"model": to_dict(model_config), "classes": store.classes, "method": args.method, "seed": args.seed,
            "rounds": rounds, "precision": precision}
    checkpoint.save(path, model, meta)


def _resume_point(args: argparse.Namespace, *files: Path):
    """Where this run saves its state between rounds, keyed by everything the run depends on."""
    from fedmlp.resume import ResumePoint, fingerprint
    from fedmlp.store import MANIFEST

    if args.resume_state is None:
        return None
    key = fingerprint(args.command, args.method, args.seed, args.train, args.model, args.method_settings,
                      files=(args.store / MANIFEST, args.partition, *files))
    return ResumePoint(args.resume_state, key, every=args.resume_every)


def cmd_train(args: argparse.Namespace) -> None:
    from fedmlp import federated

    store, partition, method, train, model_config, rt = _training_inputs(args)
    resume = _resume_point(args)
    result = federated.run(store, partition, method, train, model_config, args.seed, rt, resume=resume)
    _write_rounds(args.out_rounds, federated.history_rows(result.history))
    _save_model(args.out_model, result.model, store, args, model_config, rt.precision, result.history[-1].round)
    if resume:
        resume.clear()


def _staged(method):
    if not hasattr(method, "first_stage2_round"):
        raise FedmlpError(f"method {method.name!r} is not trained in stages; use 'fedmlp train'")
    return method


def cmd_warmup(args: argparse.Namespace) -> None:
    from fedmlp import federated

    store, partition, method, train, model_config, rt = _training_inputs(args)
    warmup_rounds = _staged(method).first_stage2_round
    if warmup_rounds < 1:
        raise FedmlpError("config key 'fedmlp.warmup_rounds': expected at least 1")
    resume = _resume_point(args)
    result = federated.run(store, partition, method, train, model_config, args.seed, rt, rounds=range(warmup_rounds), resume=resume)
    _write_rounds(args.out_rounds, federated.history_rows(result.history))
    _save_model(args.out_model, result.model, store, args, model_config, rt.precision, warmup_rounds)
    if resume:
        resume.clear()


def _load_warmup(path: Path, store, model_config, rt):
    from fedmlp import checkpoint
    from fedmlp.config import to_dict

    model, meta = checkpoint.load(path)
    if meta["classes"] != store.classes or meta["model"] != {**to_dict(model_config), "pretrained": meta["model"]["pretrained"]}:
        raise FedmlpError(f"{path}: was trained for another model or class list than this run's config")
    return model.to(rt.device)


def cmd_pseudolabel(args: argparse.Namespace) -> None:
    from fedmlp import federated
    from fedmlp.atomic import write_json, write_text
    from fedmlp.diagnostics import pseudo_label_quality
    from fedmlp.methods import RoundContext

    store, partition, method, train, model_config, rt = _training_inputs(args)
    method = _staged(method)
    model = _load_warmup(args.warmup_model, store, model_config, rt)
    clients = federated.build_clients(store, partition, method)
    states = [method.init_client_state(c) for c in clients]
    method.begin_round(RoundContext(method.first_stage2_round, model, clients, states, store, rt, train))
    artifact = method.export(clients, states, store)
    quality = pseudo_label_quality(method.first_stage2_round + 1, store, clients, states)
    write_json(args.out_artifact, artifact)
    write_text(args.out_summary, _pseudolabel_summary(artifact, quality))


def _pseudolabel_summary(artifact: dict, quality: list[dict]) -> str:
    from fedmlp.diagnostics import pooled

    total = pooled(quality)
    lines = [
        f"# Pseudo-labels before stage-2 round {artifact['round']} ({artifact['method']})",
        "",
        f"Selection: {artifact['config']['selection']}, variant: {artifact['config']['variant']}, "
        f"accumulate: {artifact['config']['accumulate']}.",
        "",
        "Precision and recall are diagnostics against the hidden labels; training never reads them.",
        "",
        "| client | class | learning degree | τ0 | τ1 | pseudo-neg | pseudo-pos | precision neg | precision pos | recall pos |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(value: float) -> str:
        return "n/a" if value != value else f"{value:.3f}"

    for r in quality:
        lines.append(f"| {r['client']} | {r['class']} | {fmt(r['learning_degree'])} | {fmt(r['tau0'])} | {fmt(r['tau1'])} | "
                     f"{r['selected_negative']} | {r['selected_positive']} | {fmt(r['precision_negative'])} | "
                     f"{fmt(r['precision_positive'])} | {fmt(r['recall_positive'])} |")
    lines += ["", f"All clients: {total['selected_negative']} pseudo-negatives (precision {fmt(total['precision_negative'])}), "
              f"{total['selected_positive']} pseudo-positives (precision {fmt(total['precision_positive'])}, "
              f"recall of hidden positives {fmt(total['recall_positive'])}).", ""]
    degrees = ", ".join(f"{c} {fmt(v) if v is not None else 'n/a'}" for c, v in artifact["global_learning_degree"].items())
    lines += [f"Global learning degrees: {degrees}.", ""]
    return "\n".join(lines)


def cmd_teacher(args: argparse.Namespace) -> None:
    import pandas as pd

    from fedmlp import federated
    from fedmlp.diagnostics import pseudo_label_quality

    store, partition, method, train, model_config, rt = _training_inputs(args)
    method = _staged(method)
    artifact = _read_json(args.pseudolabels)
    if artifact.get("method") != method.name:
        raise FedmlpError(f"{args.pseudolabels}: made for method {artifact.get('method')!r}, not {method.name!r}")
    method.preload(artifact)
    model = _load_warmup(args.warmup_model, store, model_config, rt)
    run_info = json.loads(args.run)

    def record(round_number, clients, states):
        return [{**run_info, **row} for row in pseudo_label_quality(round_number, store, clients, states)]

    stage2 = range(method.first_stage2_round, method.n_rounds(train))
    resume = _resume_point(args, args.warmup_model, args.pseudolabels)
    result = federated.run(store, partition, method, train, model_config, args.seed, rt, rounds=stage2,
                           initial_model=model, on_round_end=record, resume=resume)
    warmup = pd.read_csv(args.warmup_rounds)
    _write_rounds(args.out_rounds, warmup.to_dict(orient="records") + federated.history_rows(result.history))
    _write_rounds(args.out_diagnostics, result.round_rows)
    _save_model(args.out_model, result.model, store, args, model_config, rt.precision, method.n_rounds(train))
    if resume:
        resume.clear()


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
    import pandas as pd

    from fedmlp.report import write_report

    diagnostics = pd.concat([pd.read_csv(p) for p in args.diagnostics]) if args.diagnostics else None
    write_report([_read_json(p) for p in args.metrics], args.summary, args.report, args.figure, diagnostics)


def cmd_dicom2png(args: argparse.Namespace) -> None:
    from fedmlp.atomic import atomic_path
    from fedmlp.dicom import read_ct
    from fedmlp.windowing import resize, to_pil, to_uint8, window

    image = to_uint8(resize(window(read_ct(args.input), args.windowing, str(args.input)), args.size))
    with atomic_path(args.output) as tmp:
        to_pil(image).save(tmp, format="PNG")


def cmd_bench(args: argparse.Namespace) -> None:
    from fedmlp import bench

    settings = bench.BenchSettings(
        stage=args.stage, size=args.size, images=args.images, model=args.model, precision=args.precision,
        device=args.device, batch_size=args.batch_size, channels=args.channels, threads=args.threads, store=args.store,
    )
    result = bench.run(settings)
    print(result.summary())
    if args.json is not None:
        bench.write_json(result, args.json)


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

    p = add("download", cmd_download, "download a real dataset (ich: Kaggle; chestxray14: the NIH archives), resumably")
    p.add_argument("dataset", choices=["ich", "chestxray14"])
    p.add_argument("--out", type=Path, required=True, help="raw directory to fill")
    p.add_argument("--settings", default="{}", help="JSON of the dataset's config section ('ich' or 'chestxray14')")
    p.add_argument("--done", type=Path, default=None, help="marker file to write once everything is downloaded and verified")

    p = add("ingest", cmd_ingest, "decode, window and resize a raw dataset into an image store")
    p.add_argument("--raw", type=Path, required=True, help="the raw directory (Kaggle RSNA layout, or ChestX-ray14's)")
    p.add_argument("--out", type=Path, required=True, help="store directory to create")
    p.add_argument("--dataset", default="synthetic-ich", choices=["synthetic-ich", "ich", "chestxray14"])
    p.add_argument("--settings", default="{}", help="JSON of the 'preprocess' config section")
    p.add_argument("--source-settings", default="{}", help="JSON of the 'chestxray14' config section (its classes)")
    p.add_argument("--workers", type=int, default=1, help="decoding processes")
    p.add_argument("--report", type=Path, default=None,
                   help="CSV of the images left out and why (default: beside the store, OUT.skipped.csv); written even when ingest fails")

    p = add("split", cmd_split, "train/test split of a store: the paper's random one, or ChestX-ray14's official lists")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--settings", default="{}", help="JSON of the 'split' config section")
    p.add_argument("--raw", type=Path, default=None, help="raw directory holding the official split lists")
    p.add_argument("--out", type=Path, required=True)

    p = add("partition", cmd_partition, "divide the training images among clients and assign annotated classes")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--settings", default="{}", help="JSON of the 'federation' config section")
    p.add_argument("--out", type=Path, required=True)

    p = add("paper-split", cmd_paper_split, "the paper's exact split and client partition, from the label file alone")
    p.add_argument("dataset", choices=["chestxray14"])
    p.add_argument("--data-entry", type=Path, required=True, help="Data_Entry_2017_v2020.csv (or .csv.gz)")
    p.add_argument("--out", type=Path, required=True, help="directory for partition.json")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--classes", default=None, help="comma-separated classes, client k annotating class k (default: the ChestX-ray8 eight)")

    def training_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", type=Path, required=True)
        p.add_argument("--partition", type=Path, required=True)
        p.add_argument("--method", required=True)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--train", default="{}", help="JSON of the 'train' config section")
        p.add_argument("--model", default="{}", help="JSON of the 'model' config section")
        p.add_argument("--method-settings", default="{}", help="JSON of the method's own config section")

    def resume_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--resume-state", type=Path, default=None,
                       help="file for the state between rounds: saved as training goes, continued if present, removed at the end")
        p.add_argument("--resume-every", type=int, default=1, help="save the state every N rounds")

    p = add("train", cmd_train, "federated training of one method with one seed (all its rounds)")
    training_args(p)
    resume_args(p)
    p.add_argument("--out-model", type=Path, required=True)
    p.add_argument("--out-rounds", type=Path, required=True)

    p = add("warmup", cmd_warmup, "FedMLP stage 1: the warm-up rounds, ending in the warm-up checkpoint")
    training_args(p)
    resume_args(p)
    p.add_argument("--out-model", type=Path, required=True)
    p.add_argument("--out-rounds", type=Path, required=True)

    p = add("pseudolabel", cmd_pseudolabel, "FedMLP: prototypes, learning degrees and the first missing-label detection")
    training_args(p)
    p.add_argument("--warmup-model", type=Path, required=True)
    p.add_argument("--out-artifact", type=Path, required=True, help="pseudolabels.json (training input; no hidden labels)")
    p.add_argument("--out-summary", type=Path, required=True, help="human-readable summary with diagnostics")

    p = add("teacher", cmd_teacher, "FedMLP stage 2: pseudo-labels and the global teacher, from the warm-up")
    training_args(p)
    resume_args(p)
    p.add_argument("--warmup-model", type=Path, required=True)
    p.add_argument("--warmup-rounds", type=Path, required=True)
    p.add_argument("--pseudolabels", type=Path, required=True)
    p.add_argument("--run", default="{}", help="JSON identifying the run (copied into the diagnostics)")
    p.add_argument("--out-model", type=Path, required=True)
    p.add_argument("--out-rounds", type=Path, required=True)
    p.add_argument("--out-diagnostics", type=Path, required=True)

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

    p = add("report", cmd_report, "summary.csv, report.md and the per-round plots from metrics (and diagnostics) files")
    p.add_argument("metrics", type=Path, nargs="+")
    p.add_argument("--diagnostics", type=Path, nargs="*", default=[],
                   help="pseudo-label diagnostics CSVs; their plot goes to pseudolabels.png beside --figure")
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    p.add_argument("--figure", type=Path, required=True)

    p = add("bench", cmd_bench, "images/s and peak memory of the data path and of a FedMLP stage-1 or stage-2 local round")
    p.add_argument("--stage", choices=["loader", "1", "2"], required=True,
                   help="loader: read and augment batches only; 1: a warm-up local round; 2: a stage-2 round (detection + local update)")
    p.add_argument("--size", type=int, default=224, help="image size in pixels of the generated store (default 224)")
    p.add_argument("--images", type=int, default=256, help="images in the benched client (default 256)")
    p.add_argument("--model", choices=["resnet18", "compact-cnn"], default="resnet18")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 on CUDA and on CPUs with AVX-512 BF16 or AMX, fp32 elsewhere")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--channels", type=int, choices=[1, 3], default=3, help="channels of the generated store (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--store", type=Path, default=None, help="bench on an existing store instead of generated random images")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON to this file")

    p = add("dicom2png", cmd_dicom2png, "window one DICOM file into a PNG (RGB for bsb, grayscale for header)")
    p.add_argument("--windowing", choices=["bsb", "header"], required=True)
    p.add_argument("--size", type=int, default=None, help="output size in pixels (default: native)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # on SIGTERM too, so that temporary files are removed on the way out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        args.func(args)
    except FedmlpError as exc:
        print(f"fedmlp {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or missing directory: where and what, not a traceback
        log.debug("OSError", exc_info=True)
        output = next((v for k, v in vars(args).items() if k.startswith("out") and v is not None), None)
        print(f"fedmlp {args.command}: error: {describe_os_error(exc, output)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedmlp {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
