"""`qm`: the command line for agents (`--json`), humans (approvals, limits) and operators (`qm dev`).

Every verb is a client of the Quartermaster API (`QM_API_URL`); none holds a key or talks to Temporal.
Exit codes: 0 done, 2 bad input, 3 waiting for a human, 4 refused or undone, 1 any other failure.
Errors print one line, `CODE: message`, or with `--json` an object `{"error": {"code", "message"}}`
(argument errors too).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, cast

from models.errors import ErrorCode, QuartermasterError
from quartermaster.cli import verbs
from quartermaster.cli.output import report_error
from quartermaster.logging_setup import configure_logging


class UsageError(Exception):
    """A bad command line: reported like every other error (one line, or JSON with --json)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from quartermaster import __version__

    parser = _Parser(prog="qm", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"qm {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    for register in verbs.REGISTRY:
        register(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the exit code. Async verbs run in a fresh event loop."""
    return _guarded(argv, lambda result: asyncio.run(result))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace | int:
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        return build_parser().parse_args(raw)
    except UsageError as err:
        return report_error(argparse.Namespace(json="--json" in raw), ErrorCode.INVALID_REQUEST, str(err))


async def main_async(argv: Sequence[str]) -> int:
    """`main` for callers already inside an event loop (embedding agents, tests)."""
    args = _parse(argv)
    if isinstance(args, int):
        return args
    return await _guarded_async(args)


def _guarded(argv: Sequence[str] | None, run_async: Callable[[Any], Any]) -> int:
    args = _parse(argv)
    if isinstance(args, int):
        return args
    try:
        result = args.handler(args)
        if inspect.isawaitable(result):
            result = run_async(result)
        return int(result or 0)
    except BaseException as err:
        return _map_error(args, err)


async def _guarded_async(args: argparse.Namespace) -> int:
    try:
        result = args.handler(args)
        if inspect.isawaitable(result):
            result = await result
        return int(result or 0)
    except BaseException as err:
        return _map_error(args, err)


def _map_error(args: argparse.Namespace, err: BaseException) -> int:
    """Known failures become one line with a stable code and the verb's exit code."""
    if isinstance(err, QuartermasterError):
        return report_error(args, err.code, err.message)
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, ConnectionError | OSError):
        return report_error(args, ErrorCode.UNKNOWN_ERROR, f"{type(err).__name__}: cannot reach a service")
    if isinstance(err, RuntimeError) and "connect" in str(err).lower():
        return report_error(args, ErrorCode.TEMPORAL_UNAVAILABLE, "cannot connect to Temporal")
    if isinstance(err, SystemExit) or os.environ.get("QM_DEBUG") == "1":
        raise err
    # never a traceback (it could carry a value); QM_DEBUG=1 shows one
    return report_error(
        args, ErrorCode.UNKNOWN_ERROR, f"{type(err).__name__}: unexpected error (QM_DEBUG=1 shows more)"
    )


def console() -> None:
    """The `qm` console script. Exits without interpreter finalization: the Temporal client's native
    threads can abort a finalizing interpreter (a 134 exit code instead of ours)."""
    if sys.argv[1:2] != ["dev"]:  # `qm dev` shows its children's output as it is
        configure_logging(logging.WARNING)
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
