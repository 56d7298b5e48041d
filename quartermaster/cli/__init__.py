"""`qm`: the command line for agents (`--json`), humans (approvals, limits) and operators (`qm dev`).

Exit codes: 0 success, 2 bad input, 3 waiting for a human, 1 any other failure. Errors print one line,
`CODE: message`, or with `--json` an object `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys
from collections.abc import Sequence

from models.errors import ErrorCode, QuartermasterError
from quartermaster.cli import verbs
from quartermaster.cli.output import report_error
from quartermaster.logging_setup import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for register in verbs.REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb != "dev":  # `qm dev` shows its children's output as it is
        configure_logging(logging.WARNING)
    try:
        result = args.handler(args)
        if inspect.isawaitable(result):
            result = asyncio.run(result)  # type: ignore[arg-type]
        return int(result or 0)
    except QuartermasterError as err:
        return report_error(args, err.code, err.message)
    except KeyboardInterrupt:
        return 130
    except (ConnectionError, OSError) as err:
        return report_error(args, ErrorCode.UNKNOWN_ERROR, f"{type(err).__name__}: cannot reach a service")
    except RuntimeError as err:
        if "connect" in str(err).lower():
            return report_error(args, ErrorCode.TEMPORAL_UNAVAILABLE, "cannot connect to Temporal")
        raise


def console() -> None:
    """The `qm` console script. Exits without interpreter finalization: the Temporal client's native
    threads can abort a finalizing interpreter (a 134 exit code instead of ours)."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
