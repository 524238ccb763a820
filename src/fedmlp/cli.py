"""The ``fedmlp`` command. Snakemake rules call these subcommands; each is a thin wrapper.

Settings arrive as JSON (the config section a rule depends on) so that what Snakemake tracks as
``params`` is exactly what the stage uses. Every user-fixable problem exits with status 2 and one
line naming the file or config key. The subcommands live in :mod:`fedmlp.commands`, one module per
workflow stage.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Callable

from fedmlp.commands import MODULES
from fedmlp.errors import FedmlpError, describe_os_error, one_line

log = logging.getLogger("fedmlp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedmlp", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    for name in MODULES:
        importlib.import_module(f"fedmlp.commands.{name}").add_commands(add)
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
