"""``presto-ray`` / ``python -m presto_ray``: one subcommand per box of the data flow.

Every command takes ``--config FILE`` (a YAML file or a preset name from configs/) plus dotted
overrides such as ``model.depth=8 train.lr=1e-4``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
import traceback

from presto_ray.cli_commands import COMMANDS, Command


def user_error(err: BaseException) -> BaseException:
    """The exception our code raised, taken out of Ray's wrappers, so that the CLI sees its own type
    and message: a RayTaskError's ``cause`` (a Ray task, or a Ray Data operator raising the original
    error, as the training reader's BadRowError does), Ray Train's WorkerGroupError (the lowest
    failed rank's error) and ControllerError (``controller_failure``), nested in any order. Only
    Ray's wrappers are opened: an error of ours raised ``from`` another keeps its own message.
    Anything else comes back as it is."""
    from ray.exceptions import RayError
    from ray.train import ControllerError, WorkerGroupError

    for _ in range(16):  # wrappers nest a few deep (Train -> task -> Data); never loop forever
        if isinstance(err, WorkerGroupError) and err.worker_failures:
            err = err.worker_failures[min(err.worker_failures)]
        elif isinstance(err, ControllerError):
            err = err.controller_failure
        elif isinstance(err, RayError) and getattr(err, "cause", None) is not None:
            err = err.cause
        else:
            return err
    return err


def _add_command(commands: argparse._SubParsersAction, command: Command) -> None:
    p = commands.add_parser(command.name, help=command.help, description=command.description)
    for arg in command.args:
        p.add_argument(*arg.flags, **copy.deepcopy(arg.options))  # a fresh default list per parser
    if command.subcommands:
        kinds = p.add_subparsers(dest=command.name, required=True)
        for sub in command.subcommands:
            _add_command(kinds, sub)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``presto-ray``: the global options, then one subparser per entry of
    ``cli_commands.COMMANDS``."""
    parser = argparse.ArgumentParser(prog="presto-ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true",
                        help="on an input error, print the traceback as well as the one-line message")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        _add_command(commands, command)
    return parser


def _chosen(args: argparse.Namespace) -> Command:
    """The table entry the parsed ``args`` ran: a top-level command, or the kind of one that has
    kinds (``sweep layer-drop``), whose name ``_add_command`` stored under the command's name."""
    commands, name = COMMANDS, args.command
    while True:
        command = next(c for c in commands if c.name == name)
        if not command.subcommands:
            return command
        commands, name = command.subcommands, getattr(args, command.name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may also come after options: `train-teacher --run-name x train.lr=1e-4`
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from presto_ray.config import ConfigError
    from presto_ray.train.export import ExportError

    handler = _chosen(args).handler
    t0 = time.perf_counter()
    try:
        code = handler(args)
    except Exception as wrapped:  # noqa: BLE001 - input errors become one line, others propagate
        err = user_error(wrapped)
        if not isinstance(err, (ConfigError, ExportError, OSError, ValueError)):  # OSError: storage, named by URI
            raise
        if args.verbose:
            traceback.print_exception(wrapped, file=sys.stderr)
        print(f"presto-ray {args.command}: error: {err}", file=sys.stderr)
        return 2
    logging.getLogger("presto_ray").info("%s finished in %.1f s", args.command, time.perf_counter() - t0)
    return code


if __name__ == "__main__":
    sys.exit(main())
