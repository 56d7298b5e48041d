"""Where a waiting request's memory goes: the worker process's Python heap (tracemalloc) and RSS, with
N requests parked at the terms gate through the API, against N parked floor workflows.

    .venv/bin/python -m bench.memory              # N=200 of each, C=20
    .venv/bin/python -m bench.memory --quick      # N=10, C=5

The floor is parked first, then the real requests (the same pacing as `bench.waiting`); the growth
of each is read between the two. The tables list the source files that allocated the growth (the
first frame of each allocation), so a per-run copy of something shows up by file. N stays under the
workers' cache of 1,000 runs, so every parked run is in memory: this is the cost per cached run.
Tracing slows the process down; use `bench.waiting` for rates.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc
from typing import TextIO

from bench.floor import floor_worker
from bench.stack import (
    WORKER_OPTIONS,
    agent_client,
    bench_stack,
    rss_bytes,
    run_script,
    table,
)
from bench.waiting import park, park_floor, sample_plan
from tests.fixtures.stack import new_email

SITE = "site-packages/"


def _where(filename: str) -> str:
    return filename.split(SITE, 1)[1] if SITE in filename else filename


def _growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int) -> list[list[object]]:
    stats = after.compare_to(before, "filename")
    return [[_where(s.traceback[0].filename), f"{s.size_diff / 1024:.0f}", s.count_diff] for s in stats[:top]]


async def measure(args: argparse.Namespace, out: TextIO) -> int:
    async with bench_stack(approval_timeout_seconds=3600) as bench:
        queue = f"{bench.stack.settings.task_queue}-floor"
        async with floor_worker(bench.client, queue, WORKER_OPTIONS):
            plan = await sample_plan(bench)
            bench.agents.append(await agent_client(bench, new_email()))
            await park(bench, args.c, args.c)  # warm both: first-use allocations are not per request
            await park_floor(bench, plan, args.c, args.c, queue)
            gc.collect()
            tracemalloc.start(1)
            s0, r0 = tracemalloc.take_snapshot(), rss_bytes()
            await park_floor(bench, plan, args.n, args.c, queue)
            gc.collect()
            s1, r1 = tracemalloc.take_snapshot(), rss_bytes()
            await park(bench, args.n, args.c)
            gc.collect()
            s2, r2 = tracemalloc.take_snapshot(), rss_bytes()
            tracemalloc.stop()
    heap = {
        "floor": sum(s.size_diff for s in s1.compare_to(s0, "filename")),
        "real": sum(s.size_diff for s in s2.compare_to(s1, "filename")),
    }
    rss = {"floor": r1 - r0, "real": r2 - r1}
    rows = [
        [name, f"{heap[name] / args.n / 1024:.0f}", f"{rss[name] / args.n / 1024:.0f}"]
        for name in ("real", "floor")
    ]
    rows.append(
        [
            "real / floor",
            f"{heap['real'] / max(heap['floor'], 1):.2f}",
            f"{rss['real'] / max(rss['floor'], 1):.2f}",
        ]
    )
    table(f"worker process growth per parked run, N={args.n} of each, C={args.c}",
          ["parked", "python heap KiB/run", "RSS KiB/run"], rows, out)  # fmt: skip
    cols = ["allocated in", "KiB", "objects"]
    table("real requests: where the heap grew", cols, _growth(s1, s2, args.top), out)
    table("floor: where the heap grew", cols, _growth(s0, s1, args.top), out)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=200, help="parked runs of each kind (default 200)")
    p.add_argument("--c", type=int, default=20, help="in flight (default 20)")
    p.add_argument("--top", type=int, default=12, help="files listed (default 12)")
    p.add_argument("--quick", action="store_true", help="N=10, C=5")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.c = 10, 5
    return args


def main(argv: list[str] | None = None) -> int:
    return run_script(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
