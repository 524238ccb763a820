"""``fedmlp ingest``: decode, window and resize a raw dataset into an image store."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmlp.commands.common import count
from fedmlp.errors import FedmlpError


def cmd_ingest(args: argparse.Namespace) -> None:
    from fedmlp.config import ChestXray14Config, PreprocessConfig, from_json
    from fedmlp.ingest import ingest_chestxray14, ingest_ich

    preprocess = from_json(PreprocessConfig, args.settings, "preprocess")
    if args.dataset == "chestxray14":
        source = from_json(ChestXray14Config, args.source_settings, "chestxray14")
        ingest_chestxray14(args.raw, args.out, preprocess, source.classes, workers=args.workers, report=args.report)
    elif args.dataset == "custom":
        from fedmlp.config import CustomConfig
        from fedmlp.sources.custom import ingest_custom

        custom = from_json(CustomConfig, args.source_settings, "custom")
        for key in ("root", "labels"):
            if getattr(custom, key) is None:
                raise FedmlpError(f"config key 'custom.{key}': required with dataset custom")
        ingest_custom(custom, args.out, preprocess, workers=args.workers, report=args.report)
    else:
        ingest_ich(args.raw, args.out, preprocess, args.dataset, workers=args.workers, report=args.report)


def add_commands(add) -> None:
    p = add("ingest", cmd_ingest, "decode, window and resize a raw dataset into an image store")
    p.add_argument("--raw", type=Path, required=True, help="the raw directory (Kaggle RSNA layout, or ChestX-ray14's; custom: not read, custom.root is)")
    p.add_argument("--out", type=Path, required=True, help="store directory to create")
    p.add_argument("--dataset", default="synthetic-ich", choices=["synthetic-ich", "ich", "chestxray14", "custom"])
    p.add_argument("--settings", default="{}", help="JSON of the 'preprocess' config section")
    p.add_argument("--source-settings", default="{}", help="JSON of the dataset's config section ('chestxray14': its classes; 'custom': root and labels)")
    p.add_argument("--workers", type=count(1, 256), default=1, help="decoding processes")
    p.add_argument("--report", type=Path, default=None,
                   help="CSV of the images left out and why (default: beside the store, OUT.skipped.csv); written even when ingest fails")
