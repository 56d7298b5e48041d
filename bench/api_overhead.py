"""The API's own overhead: requests per second and latency of `catalog` and `status` through the API
(real HTTP on loopback, authenticated as a logged-in human) against the same operation called directly
on the server-side `Orchestrator` in the same process, at the same concurrency.

    .venv/bin/python -m bench.api_overhead            # N=500 calls, C=50
    .venv/bin/python -m bench.api_overhead --quick    # N=50, C=10

The API runs as its own process (`python -m quartermaster.api`, as `qm dev` and a deployment run it),
so the table also gives its CPU per call; `direct` runs in this process, beside the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

from bench.stack import Bench, bench_stack, cpu_seconds, human_client, print_machine, quiet_stdout, table
from tests.fixtures.stack import new_email


async def _load(n: int, c: int, call: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(calls per second, p50 ms) of `n` calls, at most `c` at a time."""
    gate = asyncio.Semaphore(c)
    latencies: list[float] = []

    async def one() -> None:
        async with gate:
            t = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - t) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0), statistics.median(latencies)


async def measure(bench: Bench, n: int, c: int, out: TextIO) -> None:
    stack = bench.stack
    email = new_email()
    human = await human_client(bench, email)
    view = await human.provisions.create(
        service_id="cloud/workers", name="bench", request_id="bench-1", wait=20
    )
    if view.state == "waiting_for_human":
        w = view.waiting_for[0]
        await human.approvals.decide(
            w.approval_id, decision="approve", code=stack.code_for(w.approval_id, email)
        )
        view = await human.provisions.wait("bench-1", timeout=60)
    pid = stack.principal_id(email)
    rows = []
    for name, direct, api in (
        ("catalog", lambda: stack.qm.catalog(), lambda: human.catalog.list()),
        ("status", lambda: stack.qm.status("bench-1", pid), lambda: human.provisions.get("bench-1")),
    ):
        await _load(min(n, 20), c, api)  # warm both paths
        d_rps, d_p50 = await _load(n, c, direct)
        cpu0 = cpu_seconds(bench.api_pid) if bench.api_pid else 0.0
        a_rps, a_p50 = await _load(n, c, api)
        cpu = f"{(cpu_seconds(bench.api_pid) - cpu0) * 1000 / n:.2f}" if bench.api_pid else "-"
        ratio = f"{a_rps / d_rps:.2f}"
        rows.append([name, f"{d_rps:.1f}", f"{d_p50:.1f}", f"{a_rps:.1f}", f"{a_p50:.1f}", ratio, cpu])
    table(
        f"the API's overhead: N={n} calls at C={c} (direct = Orchestrator in this process)",
        ["call", "direct /s", "direct p50 ms", "API /s", "API p50 ms", "API/direct", "API CPU ms/call"],
        rows,
        out,
    )
    await human.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_overhead")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("-c", type=int, default=50)
    args = parser.parse_args()
    n, c = (50, 10) if args.quick else (args.n, args.c)

    async def run() -> None:
        with quiet_stdout() as out:
            print_machine(out)
            async with bench_stack() as bench:
                await measure(bench, n, c, out)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
