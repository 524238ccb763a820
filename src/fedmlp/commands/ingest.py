"""``fedmlp ingest``: decode, window and resize a raw dataset into an image store."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmlp.commands.common import count, declare_paths


def cmd_ingest(args: argparse.Namespace) -> None:
    from fedmlp.commands.common import parse_json_option
    from fedmlp.config import PreprocessConfig, from_json
    from fedmlp.sources import registry

    preprocess = from_json(PreprocessConfig, args.settings, "preprocess")
    source = registry.get(args.dataset)
    settings = source.parse(parse_json_option(args.source_settings, "--source-settings"))
    source.ingest(args.raw, args.out, preprocess, settings, args.workers, args.report)


def add_commands(add) -> None:
    from fedmlp.sources.registry import names

    p = add("ingest", cmd_ingest, "decode, window and resize a raw dataset into an image store")
    p.add_argument("--raw", type=Path, required=True, help="the raw directory (Kaggle RSNA layout, or ChestX-ray14's; custom: its root)")
    p.add_argument("--out", type=Path, required=True, help="store directory to create")
    p.add_argument("--dataset", default="synthetic-ich", choices=names())
    p.add_argument("--settings", default="{}", metavar="JSON",
                   help="""the 'preprocess' config section, e.g. '{"windowing": "header", "size": 32}'""")
    p.add_argument("--source-settings", default="{}", metavar="JSON",
                   help="""the dataset's config section, e.g. '{"classes": ["Effusion", "Nodule"]}' for chestxray14 or """
                        """'{"root": "/data/study", "labels": "/data/study/labels.csv"}' for custom""")
    p.add_argument("--workers", type=count(1, 256), default=1, help="decoding processes")
    p.add_argument("--report", type=Path, default=None,
                   help="CSV of the images left out and why (default: beside the store, OUT.skipped.csv); written even when ingest fails")
    declare_paths(p, ["--raw"], ["--report"], replaced=["--out"])
