"""The ``fedmlp`` command. Snakemake rules call these subcommands; each is a thin wrapper.

Settings arrive as JSON (the config section a rule depends on) so that what Snakemake tracks as
``params`` is exactly what the stage uses. Every user-fixable problem exits with status 2 and one
line naming the file or config key. The subcommands live in :mod:`fedmlp.commands`, one module per
workflow stage.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from fedmlp.commands import MODULES
from fedmlp.errors import FedmlpError, describe_os_error, one_line, printable

log = logging.getLogger("fedmlp")
LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


class Parser(argparse.ArgumentParser):
    """Bad arguments are one line, like every other error: ``fedmlp <command>: error: ...`` (exit 2)."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fedmlp", description="The workflow's commands: Snakemake rules call them, each a thin wrapper. "
                    "'fedmlp COMMAND --help' shows one command's options; settings are JSON (the config section).")
    parser.add_argument("--log-level", default="INFO", choices=LEVELS, help="level of fedmlp's own messages")
    parser.add_argument("--library-log-level", default="WARNING", choices=LEVELS,
                        help="level of other libraries' messages (default WARNING: they may log what does not belong in a log)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    for name in MODULES:
        importlib.import_module(f"fedmlp.commands.{name}").add_commands(add)
    return parser


class PrintableFormatter(logging.Formatter):
    """Log messages carry image IDs, file names and file contents: their control characters are
    escaped (:func:`fedmlp.errors.printable`); a traceback appended after the message keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def configure_logging(level: str, library_level: str) -> None:
    """fedmlp's loggers at ``level``; the root logger, and so every other library, at ``library_level``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler])
    logging.getLogger().setLevel(library_level)
    log.setLevel(level)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # on SIGTERM too, so that temporary files are removed on the way out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # no command: the list of commands, as a usage error (argparse's status 2)
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    levels = logging.getLogger().level, log.level  # restored on the way out: main() may run inside another program
    configure_logging(args.log_level, args.library_log_level)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
        logging.getLogger().setLevel(levels[0])
        log.setLevel(levels[1])


def entry() -> None:
    """The ``fedmlp`` console script: :func:`main`, then an exit that skips the interpreter's
    teardown. Once torch, scikit-learn and pandas are loaded, that teardown (freeing every module's
    objects one by one) takes 0.5-1 CPU-s per process, and the workflow starts one process per job.
    Everything the command does, its outputs renamed into place and its clean-ups included, has
    finished when main() returns; logs and standard streams are flushed here first. main() itself
    returns normally, so a program that calls it in-process is unaffected, and so does ``python -m
    fedmlp``; under a profiler or a coverage tracer the exit is the normal one too (they write their
    results at exit)."""
    code = main()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        raise SystemExit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(args: argparse.Namespace) -> int:
    from fedmlp.atomic import output_group
    from fedmlp.commands.common import check_paths

    try:
        check_paths(args)  # before any work: no output may overwrite an input
        with output_group() if getattr(args, "grouped", True) else contextlib.nullcontext():
            args.func(args)  # all of the command's outputs are renamed into place at the end, or none
    except FedmlpError as exc:
        print(f"fedmlp {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except OSError as exc:  # a full disk, a read-only or missing directory: where and what, not a traceback
        log.debug("OSError", exc_info=True)
        output = next((v for k, v in vars(args).items() if k.startswith("out") and v is not None), None)
        print(f"fedmlp {args.command}: error: {describe_os_error(exc, output)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedmlp {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
