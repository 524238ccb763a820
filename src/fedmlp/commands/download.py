"""``fedmlp download``: a real dataset, resumable and verified."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmlp.commands.common import declare_paths
from fedmlp.errors import FedmlpError


def cmd_download(args: argparse.Namespace) -> None:
    from fedmlp.atomic import write_text
    from fedmlp.config import ChestXray14Config, IchConfig, from_json

    if args.dataset == "ich":
        from fedmlp.sources import kaggle

        kaggle.download(args.out, from_json(IchConfig, args.settings, "ich"))
    else:
        from fedmlp.sources import nih

        config = from_json(ChestXray14Config, args.settings, "chestxray14")
        for key in ("archive_base_url", "metadata_base_url"):
            check_url(getattr(config, key), f"chestxray14.{key}")
        nih.download(args.out, config)
    if args.done is not None:
        write_text(args.done, f"{args.dataset} downloaded into {args.out}\n")


def check_url(url: str | None, key: str) -> None:
    """An http(s) URL with a host, or null; anything else would fail deep inside urllib."""
    from urllib.parse import urlsplit

    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FedmlpError(f"config key '{key}': {url!r} is not an http:// or https:// URL")


def add_commands(add) -> None:
    p = add("download", cmd_download, "download a real dataset (ich: Kaggle; chestxray14: the NIH archives), resumably")
    p.add_argument("dataset", choices=["ich", "chestxray14"])
    p.add_argument("--out", type=Path, required=True, help="raw directory to fill")
    p.add_argument("--settings", default="{}", metavar="JSON",
                   help="""the dataset's config section ('ich' or 'chestxray14'), e.g. '{"root": null, "keep_archives": false}'""")
    p.add_argument("--done", type=Path, default=None, help="marker file to write once everything is downloaded and verified")
    declare_paths(p, outputs=["--out", "--done"])
