"""Waiting at scale: N requests parked at an approval gate, then what it costs to hold and to answer them.

    .venv/bin/python -m bench.waiting                 # N=10,000
    .venv/bin/python -m bench.waiting --n 2000        # a smaller N
    .venv/bin/python -m bench.waiting --quick         # N=50

Each request comes from a new principal, so it stops at the `terms` gate (its code goes to that
principal's inbox). Measured: how long parking took, resident memory of the worker process, the
server and the simulators, how long `QuartermasterClient.approvals()` (what `qm approvals` runs) takes
to list them all, and how long ONE approval takes to complete its request while the rest keep waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TextIO

from bench.stack import Bench, bench_stack, print_machine, quiet_stdout, result_of, rss_bytes, table, until
from tests.fixtures.stack import new_email
from workflows.search_attributes import QM_STATE, State

SERVICE = "cloud/workers"
AWAITING = f"{QM_STATE.name} = '{State.AWAITING_APPROVAL}'"


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


async def awaiting(bench: Bench) -> int:
    return (await bench.client.count_workflows(AWAITING)).count


async def park(bench: Bench, n: int, c: int) -> list[tuple[str, str]]:
    """Park n requests, each from a new principal, with c in flight: a slot submits the next request
    once its previous one reached the gate (its approval notice is in the principal's inbox).
    Submitting all at once would only queue work: activities would time out and retry."""
    todo = iter(range(n))
    parked: list[tuple[str, str]] = []

    async def slot() -> None:
        for _ in todo:
            email = new_email()
            req = bench.stack.request(SERVICE, email)
            await bench.stack.qm.submit(req)
            await until(lambda: bool(bench.stack.inbox(email)), timeout=300)  # noqa: B023
            parked.append((req.request_id, email))

    await asyncio.gather(*(slot() for _ in range(c)))
    return parked


async def measure(args: argparse.Namespace, out: TextIO) -> int:
    # the gate must outlive the parking of every request
    async with bench_stack(approval_timeout_seconds=6 * 3600) as bench:
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        parked = await park(bench, args.n, args.c)
        submitted = time.perf_counter() - t0
        deadline = time.monotonic() + args.park_timeout
        waiting = await awaiting(bench)
        while waiting < args.n and time.monotonic() < deadline:
            await asyncio.sleep(1)  # visibility is eventually consistent: poll the count
            waiting = await awaiting(bench)
        parked_s = time.perf_counter() - t0
        rows: list[list[object]] = [
            [
                "requests submitted and notified",
                len(parked),
                f"{submitted:.1f} s ({len(parked) / submitted:.1f}/s)",
            ],
            ["requests parked at the terms gate", waiting, f"{parked_s:.1f} s ({waiting / parked_s:.1f}/s)"],
            ["worker process RSS before -> parked", "", f"{mib(rss0)} -> {mib(rss_bytes())}"],
        ]
        if bench.server_pid:
            rows.append(["temporal server RSS", "", mib(rss_bytes(bench.server_pid))])
        if bench.sims_pid:
            rows.append(["simulators RSS", "", mib(rss_bytes(bench.sims_pid))])
        t1 = time.perf_counter()
        listed = await bench.stack.qm.approvals()
        rows.append(
            ["qm approvals: list every pending approval", len(listed), f"{time.perf_counter() - t1:.2f} s"]
        )
        request_id, email = parked[len(parked) // 2]
        t2 = time.perf_counter()
        approval = await bench.stack.wait_for_approval(request_id, "terms")
        decided = await bench.stack.decide(approval["approval_id"], email)
        accepted = time.perf_counter() - t2
        res = await result_of(bench.stack, request_id)
        one = time.perf_counter() - t2
        rows.append(["one approval: decision accepted", decided.status, f"{accepted * 1000:.0f} ms"])
        rows.append(["one approval: request completed", res.outcome, f"{one * 1000:.0f} ms"])
        rows.append(["still waiting afterwards", await awaiting(bench), ""])
        table(
            f"waiting at scale: N={args.n} requests parked at an approval gate",
            ["what", "count", "value"],
            rows,
            out,
        )
        if waiting < args.n:
            print(f"only {waiting} of {args.n} parked within {args.park_timeout} s", file=out)
        return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.waiting", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="parked requests (default 10,000)")
    p.add_argument("--c", type=int, default=50, help="submissions in flight (default 50)")
    p.add_argument("--park-timeout", type=float, default=3600, help="seconds to wait for all to park")
    p.add_argument("--quick", action="store_true", help="N=50")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.c = 50, 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with quiet_stdout() as out:
        print_machine(out)
        return asyncio.run(measure(args, out))


if __name__ == "__main__":
    raise SystemExit(main())
