"""``fedmlp download``: a real dataset, resumable and verified (its source's download recipe)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmlp.commands.common import declare_paths
from fedmlp.errors import FedmlpError


def cmd_download(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_text
    from fedmlp.config import from_json
    from fedmlp.sources import registry

    source = registry.get(args.dataset)
    if source.download is None:
        having = ", ".join(registry.named("downloaded"))
        raise FedmlpError(f"dataset {args.dataset!r} is not downloaded (it is {source.summary}); fedmlp download takes {having}")
    source.download(args.out, from_json(source.config, args.settings, source.section))
    if args.done is not None:
        write_text(args.done, f"{args.dataset} downloaded into {args.out}\n")


def add_commands(add) -> None:
    from fedmlp.sources.registry import names

    p = add("download", cmd_download, "download a real dataset (ich: Kaggle; chestxray14: the NIH archives), resumably")
    p.add_argument("dataset", choices=names(), help="a dataset that is downloaded (the others are refused with the list)")
    p.add_argument("--out", type=Path, required=True, help="raw directory to fill")
    p.add_argument("--settings", default="{}", metavar="JSON",
                   help="""the dataset's config section ('ich' or 'chestxray14'), e.g. '{"root": null, "keep_archives": false}'""")
    p.add_argument("--done", type=Path, default=None, help="marker file to write once everything is downloaded and verified")
    declare_paths(p, outputs=["--out", "--done"])
