"""`qm dev`: run the whole local stack in the foreground."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from models.errors import ErrorCode
from quartermaster.cli.output import report_error


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dev", help="start Temporal, the simulators, the codec server and the worker")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("QM_DATA_DIR", ".qm")))
    p.add_argument("--port-offset", type=int, default=0, help="add N to every port (a second stack)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from quartermaster import devstack

    try:
        return devstack.run(args.data_dir.resolve(), args.port_offset)
    except devstack.PortInUseError as err:
        return report_error(args, ErrorCode.PORT_IN_USE, str(err))
