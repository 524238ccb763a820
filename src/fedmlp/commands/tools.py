"""Tools beside the workflow: ``fedmlp methods``, ``fedmlp dicom2png``, ``fedmlp bench``, ``fedmlp dvc-yaml``, ``fedmlp dvc-fetch``,
``fedmlp plots``, ``fedmlp metrics``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedmlp.commands.common import count, declare_paths
from fedmlp.errors import FedmlpError


def cmd_methods(args: argparse.Namespace) -> None:
    from fedmlp.methods import registry

    for spec in registry.specs().values():
        section = f"[{spec.section}]" if spec.section else ""
        print(f"{spec.name:18} {section:11} {spec.summary}")


def cmd_dicom2png(args: argparse.Namespace) -> None:
    from fedmlp.atomic import atomic_path
    from fedmlp.dicom import read_ct
    from fedmlp.windowing import resize, to_pil, to_uint8, window

    refuse_foreign_output(args.output)
    image = to_uint8(resize(window(read_ct(args.input), args.windowing, str(args.input)), args.size))
    with atomic_path(args.output) as tmp:
        to_pil(image).save(tmp, format="PNG")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def refuse_foreign_output(output: Path) -> None:
    """The PNG may replace only a PNG, no other kind of file (the input itself is refused by the CLI's
    check that no output is an input, :func:`fedmlp.commands.common.check_paths`)."""
    if not output.exists():
        return
    if not output.is_file():
        raise FedmlpError(f"{output}: exists and is not a regular file; refusing to replace it")
    with open(output, "rb") as handle:
        if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise FedmlpError(f"{output}: exists and is not a PNG; refusing to overwrite it")


def cmd_bench(args: argparse.Namespace) -> None:
    if (args.stage is None) == (args.scale is None):
        raise FedmlpError("expected one of --stage (one client's round) or --scale (training jobs on growing stores)")
    if args.scale is not None:
        return bench_scale(args)
    from fedmlp import bench

    settings = bench.BenchSettings(
        stage=args.stage, size=args.size, images=args.images, model=args.model, precision=args.precision,
        device=args.device, batch_size=args.batch_size, channels=args.channels or 3, threads=args.threads, store=args.store,
        repeats=args.repeats,
    )
    result = bench.run(settings)
    print(result.summary())
    if args.json is not None:
        bench.write_json(result, args.json)


def bench_scale(args: argparse.Namespace) -> None:
    from fedmlp import bench_scale

    if args.store is not None:
        raise FedmlpError("--store: --scale writes its own stores, one per size")
    settings = bench_scale.ScaleSettings(
        sizes=tuple(args.scale), size=args.size, channels=args.channels or 1, model=args.model, precision=args.precision,
        device=args.device, batch_size=args.batch_size, threads=args.threads, train_seconds=args.train_seconds,
    )
    result = bench_scale.run(settings)
    print(result.summary())
    if args.json is not None:
        bench_scale.write_json(result, args.json)


def cmd_dvc_yaml(args: argparse.Namespace) -> None:
    from fedmlp import versioning
    from fedmlp.atomic import write_text

    if args.check:
        versioning.check(args.out)
        print(f"{args.out}: agrees with the code")
    else:
        write_text(args.out, versioning.render())


def _require_root(root: Path) -> None:
    if not root.is_dir():
        raise FedmlpError(f"--root {root}: not a directory (expected the repository holding dvc.lock)")


def cmd_dvc_fetch(args: argparse.Namespace) -> None:
    from fedmlp import versioning

    _require_root(args.root)
    outputs = versioning.fetch_outputs(args.root)
    print(f"fetched into the DVC cache: {', '.join(outputs) if outputs else 'nothing was missing'}")


def cmd_plots(args: argparse.Namespace) -> None:
    from fedmlp import dvc_views

    _require_root(args.root)
    print(dvc_views.show_plots(args.root, args.out))


def cmd_metrics(args: argparse.Namespace) -> None:
    from fedmlp import dvc_views

    _require_root(args.root)
    if not args.experiments:
        print(dvc_views.table(dvc_views.rows(dvc_views.workspace_metrics(args.root))))
        return
    for name, changed, metrics in dvc_views.experiments(args.root):
        params = ", ".join(f"{key}={json.dumps(value)}" for key, value in changed.items())
        print(f"{name}: {params or 'the params of its commit'}")
        print(dvc_views.table(dvc_views.rows(metrics)), end="\n\n")


def add_commands(add) -> None:
    p = add("dvc-yaml", cmd_dvc_yaml, "write dvc.yaml's stages from the code the rules run (their code fingerprints) and the config sections they read")
    p.add_argument("--out", type=Path, default=Path("dvc.yaml"), help="the file to write or check (default dvc.yaml)")
    declare_paths(p, outputs=["--out"])
    p.add_argument("--check", action="store_true", help="write nothing; fail in one line where the file disagrees")

    p = add("dvc-fetch", cmd_dvc_fetch, "dvc fetch the outputs of dvc.lock into the DVC cache; fail in one line, naming the remote, if it lacks any")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    declare_paths(p, ["--root"])

    p = add("plots", cmd_plots, "dvc plots show into an HTML page that works offline (Vega inlined); prints the page's path")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    p.add_argument("--out", type=Path, default=Path("results/dvc_plots"), help="the page's folder (default results/dvc_plots)")
    declare_paths(p, [], ["--out"], places=["--root"])  # the page belongs inside the repository it is drawn from

    p = add("metrics", cmd_metrics, "the DVC metrics (results/metrics.json) as a table: one row per setting and method, "
            "final-round mAP and AUROC as mean ± SD over seeds")
    p.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    p.add_argument("--experiments", action="store_true",
                   help="one table per row of 'dvc exp show' (workspace, commit, experiments), headed by the config keys it changed")
    declare_paths(p, ["--root"])

    add("methods", cmd_methods, "list the registered methods, their config sections and what each does")

    p = add("bench", cmd_bench, "images/s, peak memory and fraction of the hardware's bounds of the data path and of FedMLP's local rounds; "
            "or (--scale) a training job's start-up, memory and loader throughput as the store grows")
    p.add_argument("--stage", choices=["loader", "1", "2"], default=None,
                   help="loader: read and augment batches only; 1: a warm-up local round; 2: a stage-2 round (detection + local update)")
    p.add_argument("--scale", type=count(20, 10_000_000), nargs="+", default=None, metavar="N",
                   help="instead of --stage: for each N, a store of N random images, 'fedmlp train' on it (seconds to its first batch, "
                        "peak memory), the loader's uint8 images/s and the store's verification; fitted linearly and extrapolated to 750,000")
    p.add_argument("--train-seconds", type=float, default=10.0,
                   help="--scale: how long each training job trains after its first batch before it is stopped (default 10)")
    p.add_argument("--size", type=count(16, 1024), default=224, help="image size in pixels of the generated store (default 224)")
    p.add_argument("--images", type=count(1, 1_000_000), default=256, help="images in the benched client (default 256)")
    p.add_argument("--model", choices=["resnet18", "compact-cnn"], default="resnet18")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 on CUDA and on CPUs with AVX-512 BF16 or AMX, fp32 elsewhere")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=count(2, 65536), default=32)
    p.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="channels of the generated store (default 3; with --scale 1, as the ICH store)")
    p.add_argument("--threads", type=count(1, 1024), default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--store", type=Path, default=None, help="bench on an existing store instead of generated random images")
    p.add_argument("--repeats", type=int, default=3, help="time the stage and its bound this many times, alternately; the fastest counts")
    p.add_argument("--json", type=Path, default=None, help="also write the result as JSON to this file")
    declare_paths(p, ["--store"], ["--json"])

    p = add("dicom2png", cmd_dicom2png, "window one DICOM file into a PNG (RGB for bsb, grayscale for header)")
    p.add_argument("--windowing", choices=["bsb", "header"], required=True)
    p.add_argument("--size", type=count(1, 8192), default=None, help="output size in pixels (default: native)")
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    declare_paths(p, ["input"], ["output"])
