"""What one call of each kind costs the Temporal server, against a describe on the same server.

    .venv/bin/python -m bench.server_ops            # 1,500 calls of each kind at C=25 (1,000 starts)
    .venv/bin/python -m bench.server_ops --quick    # 30 of each

A provisioning asks the server for more than its floor does (`bench.throughput` lists the calls by
operation): describes, a query, updates, a second workflow start. This prices each kind on a quiet
server (the dev server's CPU, and this process's, per call: client and worker on the worker's
sandboxed runner), so the calls a provisioning makes beyond the floor's can be added up in
milliseconds (docs/performance.md). Each call goes to one of 50 running entities, as a provisioning's
go to its principal's books, limits and session.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from bench.ops_entity import OpsEntity, OpsReturn
from bench.stack import cpu_seconds, print_machine, quiet_stdout, table, temporal_client
from quartermaster.keys import Keyring

TASK_QUEUE = "bench-server-ops"
ENTITIES = 50


async def price(
    n: int, c: int, server_pid: int | None, call: Callable[[int], Awaitable[object]]
) -> tuple[float | None, float, float]:
    """(server CPU ms per call or None, this process's CPU ms per call, calls per second)."""
    gate = asyncio.Semaphore(c)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    s0 = cpu_seconds(server_pid) if server_pid else 0.0
    c0, t0 = cpu_seconds(os.getpid()), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    server = (cpu_seconds(server_pid) - s0) / n * 1000 if server_pid else None
    return server, (cpu_seconds(os.getpid()) - c0) / n * 1000, n / wall


def calls(client: Client, entities: list[str]) -> dict[str, tuple[Callable[[int], Awaitable[object]], bool]]:
    """Each kind of call, and whether it starts a new workflow (those run fewer times)."""

    def entity(i: int) -> str:
        return entities[i % len(entities)]

    async def update_with_start(i: int) -> int:
        start = WithStartWorkflowOperation(
            OpsEntity.run, 0, id=entity(i), task_queue=TASK_QUEUE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )  # fmt: skip
        return await client.execute_update_with_start_workflow(
            OpsEntity.bump, 1, start_workflow_operation=start
        )

    return {
        "describe": (lambda i: client.get_workflow_handle(entity(i)).describe(), False),
        "query": (lambda i: client.get_workflow_handle(entity(i)).query(OpsEntity.view), False),
        "signal": (lambda i: client.get_workflow_handle(entity(i)).signal(OpsEntity.poke, 1), False),
        "update": (lambda i: client.get_workflow_handle(entity(i)).execute_update(OpsEntity.bump, 1), False),
        "update-with-start (running)": (update_with_start, False),
        "start, first task, then waits": (
            lambda i: client.start_workflow(
                OpsEntity.run, 0, id=f"ops-wait-{uuid.uuid4().hex}", task_queue=TASK_QUEUE
            ),
            True,
        ),
        "start with a 30-day start delay": (
            lambda i: client.start_workflow(
                OpsEntity.run,
                0,
                id=f"ops-later-{uuid.uuid4().hex}",
                task_queue=TASK_QUEUE,
                start_delay=timedelta(days=30),
            ),
            True,
        ),
        "start and result (returns at once)": (
            lambda i: client.execute_workflow(
                OpsReturn.run, 1, id=f"ops-return-{uuid.uuid4().hex}", task_queue=TASK_QUEUE
            ),
            True,
        ),
    }


async def measure(client: Client, server_pid: int | None, n: int, c: int) -> list[list[object]]:
    from quartermaster.workflow_runner import workflow_runner
    from worker import PASSTHROUGH

    runner = workflow_runner(PASSTHROUGH, shared_code=("workflows", "bench"))
    async with Worker(
        client, task_queue=TASK_QUEUE, workflows=[OpsEntity, OpsReturn], workflow_runner=runner,
        max_cached_workflows=4 * n + ENTITIES,
    ):  # fmt: skip
        run = uuid.uuid4().hex[:8]
        entities = [f"ops-entity-{run}-{i}" for i in range(ENTITIES)]
        for wid in entities:
            await client.start_workflow(OpsEntity.run, 0, id=wid, task_queue=TASK_QUEUE)
        await asyncio.gather(*(client.get_workflow_handle(w).query(OpsEntity.view) for w in entities))
        rows: list[list[object]] = []
        base: float | None = None
        for name, (call, starts) in calls(client, entities).items():
            await price(min(n, 20), c, None, call)  # warm
            server, own, rate = await price(n * 2 // 3 if starts else n, c, server_pid, call)
            if base is None:
                base = server
            ratio = f"{server / base:.1f}" if server is not None and base else "-"
            rows.append(
                [name, f"{server:.2f}" if server is not None else "-", f"{own:.2f}", f"{rate:.0f}", ratio]
            )
        return rows


async def main_async(args: argparse.Namespace) -> int:
    n, c = (30, 5) if args.quick else (args.n, args.c)
    with quiet_stdout() as out:
        print_machine(out)
        async with temporal_client(Keyring.generate()) as (client, server_pid, _metrics):
            rows = await measure(client, server_pid, n, c)
        table(
            f"what one call costs, {n} of each at C={c} (starts: {n * 2 // 3}); "
            "server ms '-' on TEMPORAL_ADDRESS",
            ["call", "server cpu ms", "client + worker cpu ms", "calls/s", "server / describe"],
            rows,
            out,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.server_ops", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1500, help="calls of each kind (default 1500; starts 2/3 of it)")
    p.add_argument("--c", type=int, default=25, help="concurrency (default 25)")
    p.add_argument("--quick", action="store_true", help="30 of each at C=5")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
