"""The log redaction's cost as the process remembers more secrets, against remembering none.

    .venv/bin/python -m bench.redaction            # 4,000 lines per size, up to MAX_REMEMBERED values
    .venv/bin/python -m bench.redaction --quick    # 200 lines per size

Every secret the payload codec seals or unseals is remembered (`quartermaster.logging_setup`), so a
long-running worker or API holds up to MAX_REMEMBERED of them, and every log line is redacted against
all of them. Two figures per size, each in CPU microseconds and as a ratio to the same figure with
none remembered: one log line, and one new secret followed by one log line (what a provisioning does).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from collections.abc import Callable
from typing import TextIO

from bench.stack import print_machine, table
from quartermaster import logging_setup

LINE = 'HTTP Request: POST http://127.0.0.1:39589/v1/customers "HTTP/1.1 200 OK"'
GOAL = "flat: the same cost however many are remembered"


def _per_call_us(lines: int, work: Callable[[], object]) -> float:
    t0 = time.process_time()
    for _ in range(lines):
        work()
    return (time.process_time() - t0) / lines * 1e6


def _new_secret_then_a_line() -> None:
    logging_setup.remember_secret(secrets.token_urlsafe(30))
    logging_setup.redact(LINE)


def measure(lines: int, out: TextIO) -> int:
    rows: list[list[object]] = []
    base: tuple[float, float] | None = None
    for size in (0, 100, 1000, logging_setup.MAX_REMEMBERED):
        while len(logging_setup._remembered) < size:
            logging_setup.remember_secret(secrets.token_urlsafe(30))
        line = _per_call_us(lines, lambda: logging_setup.redact(LINE))
        fresh = _per_call_us(lines // 10 or 1, _new_secret_then_a_line)
        while len(logging_setup._remembered) > size:  # the new secrets do not count towards the next size
            logging_setup._forget(logging_setup._remembered.popitem(last=True)[0])
        base = base or (line, fresh)
        rows.append([size, f"{line:.1f}", f"{line / base[0]:.2f}", f"{fresh:.1f}", f"{fresh / base[1]:.2f}"])
    table(
        f"redacting one log line ({len(LINE)} chars), CPU µs; ratio to none remembered (goal: {GOAL})",
        ["remembered", "a line", "ratio", "a new secret, then a line", "ratio"],
        rows,
        out,
    )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=4000, help="log lines per size (default 4000)")
    p.add_argument("--quick", action="store_true", help="200 lines per size")
    args = p.parse_args()
    print_machine(sys.stdout)
    return measure(200 if args.quick else args.lines, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
