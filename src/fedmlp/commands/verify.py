"""``fedmlp verify``: check a store in full and record what was verified (fedmlp.store)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedmlp.commands.common import declare_paths


def cmd_verify(args: argparse.Namespace) -> None:
    from fedmlp.store import ImageStore

    for root in args.stores:
        start = time.perf_counter()
        store = ImageStore.open(root)
        identity = store.verify()
        print(f"{root}: verified ({len(store.image_ids)} images, images.npy {identity.size / 1e9:.2f} GB "
              f"in {time.perf_counter() - start:.1f} s); jobs now check only its size and times")


def add_commands(add) -> None:
    p = add("verify", cmd_verify, "check image stores in full (SHA-256 of every file) and record it, so that jobs check only the "
                                  "images' size and times")
    p.add_argument("stores", type=Path, nargs="+", help="store directories (written by 'fedmlp ingest')")
    declare_paths(p, ["stores"])  # it writes only its own record inside each store
