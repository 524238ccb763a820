"""``fedmlp synth``: the synthetic head-CT dataset in the RSNA ICH layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedmlp.commands.common import declare_paths


def cmd_synth(args: argparse.Namespace) -> None:
    from fedmlp.config import from_json
    from fedmlp.sources import synthetic

    synthetic.generate(from_json(synthetic.SyntheticConfig, args.settings, "synthetic"), args.out)


def add_commands(add) -> None:
    p = add("synth", cmd_synth, "write the synthetic head-CT dataset in the RSNA ICH layout")
    p.add_argument("--settings", default="{}", metavar="JSON",
                   help="""the 'synthetic' config section, e.g. '{"n_images": 2000, "image_size": 128, "seed": 2024}'""")
    p.add_argument("--out", type=Path, required=True, help="directory to write stage_2_train/ and stage_2_train.csv into")
    declare_paths(p, replaced=["--out"])
