"""Waiting at scale: N requests parked at an approval gate through the API, against the engine's floor
(the same no-op activities around a workflow parked on a signal), and against unattended throughput.

    .venv/bin/python -m bench.waiting                 # N=10,000
    .venv/bin/python -m bench.waiting --n 1000        # a smaller N
    .venv/bin/python -m bench.waiting --quick         # N=20

One principal's agent submits every request (`POST /v1/provisions?wait=25`, which answers once the
request waits for a human); each stops at the `terms` gate. Measured in the same run: parking rate
against unattended provisionings of the same service at the same concurrency; the human's list of
pending approvals (`GET /v1/approvals`, every page: what `qm approvals` runs); worker process memory
growth against the floor's with the same number parked; an approval's decision-to-completion time
against the floor's signal-to-completion, the median of `--approvals` of each, taken one at a time at
positions spread over the parked runs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import time
import uuid
from typing import TextIO

from temporalio.api.enums.v1 import EventType

from bench import floor
from bench.floor import PARKED_FLOOR_WORKFLOW, ParkedPlan, floor_worker, scheduled_activities
from bench.stack import (
    WORKER_OPTIONS,
    Bench,
    agent_client,
    bench_stack,
    human_client,
    prepare_agents,
    prepare_principals,
    rss_bytes,
    run_script,
    table,
)
from bench.throughput import api_job, run_phase
from tests.fixtures.stack import new_email

SERVICE = "cloud/workers"
GOALS = {"parking": 0.5, "list": 1.0, "memory": 2.0, "approval": 2.0}


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def met(ok: bool) -> str:
    return "yes" if ok else "no"


async def sample_plan(bench: Bench) -> ParkedPlan:
    """The activities a real request runs before and after its terms gate (from a real history)."""
    email = new_email()
    human = await human_client(bench, email)
    view = await human.provisions.create(service_id=SERVICE, name="sample", wait=25)
    w = view.waiting_for[0]
    await human.approvals.decide(
        w.approval_id, decision="approve", code=bench.stack.code_for(w.approval_id, email)
    )
    done = await human.provisions.wait(view.request_id, timeout=120)
    assert done.state == "completed", done
    await human.aclose()
    wid = f"provision-{bench.stack.principal_id(email)}-{view.request_id}"
    history = await bench.client.get_workflow_handle(wid).fetch_history()
    names = scheduled_activities(history)
    gate = names.index("notify_approval") + 1
    assert any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED for e in history.events)
    return ParkedPlan(before=names[:gate], after=names[gate:])


async def park_floor(bench: Bench, plan: ParkedPlan, n: int, c: int, queue: str) -> list[str]:
    """n parked floor workflows, c in flight, each until its no-ops before the gate ran: the same
    pacing as the real requests (an agent's create answers once its request waits for the human)."""
    todo = iter(range(n))
    ids: list[str] = []

    async def slot() -> None:
        for _ in todo:
            wid = f"floor-park-{uuid.uuid4().hex[:16]}"
            parked = floor.expect_noops(wid, len(plan.before))
            await bench.client.start_workflow(PARKED_FLOOR_WORKFLOW, plan, id=wid, task_queue=queue)
            await asyncio.wait_for(parked.wait(), timeout=600)
            floor.forget(wid)
            ids.append(wid)

    await asyncio.gather(*(slot() for _ in range(c)))
    return ids


async def park(bench: Bench, n: int, c: int) -> list[str]:
    """n requests from one principal's agent, c in flight, each until it waits for the human."""
    agent = bench.agents[-1]
    todo = iter(range(n))
    parked: list[str] = []

    async def slot() -> None:
        for _ in todo:
            view = await agent.provisions.create(service_id=SERVICE, name=f"p{uuid.uuid4().hex[:6]}", wait=25)
            if view.state == "running":
                view = await agent.provisions.wait(view.request_id, timeout=600)
            assert view.state == "waiting_for_human", view
            parked.append(view.request_id)

    await asyncio.gather(*(slot() for _ in range(c)))
    return parked


async def measure(args: argparse.Namespace, out: TextIO) -> int:
    # the gate must outlive the parking of every request
    async with bench_stack(approval_timeout_seconds=6 * 3600) as bench:
        queue = f"{bench.stack.settings.task_queue}-floor"
        async with floor_worker(bench.client, queue, WORKER_OPTIONS):
            plan = await sample_plan(bench)
            # unattended provisionings of the same service through the API, same concurrency
            await prepare_principals(bench, min(args.c, 10), paid=None, free=SERVICE)
            await prepare_agents(bench)
            unattended = await run_phase(bench, args.unattended, args.c, api_job(bench, SERVICE))
            # the floor parked first, then the real requests: memory grows by each in turn
            rss0 = rss_bytes()
            t0 = time.perf_counter()
            floor_ids = await park_floor(bench, plan, args.n, args.c, queue)
            floor_s = time.perf_counter() - t0
            rss1 = rss_bytes()
            email = new_email()
            bench.agents.append(await agent_client(bench, email, renew_every=300))
            human = await human_client(bench, email)
            t1 = time.perf_counter()
            parked = await park(bench, args.n, args.c)
            park_s = time.perf_counter() - t1
            rss2 = rss_bytes()
            # the human's list, every page
            t2 = time.perf_counter()
            listed = await human.approvals.list()
            list_s = time.perf_counter() - t2
            t3 = time.perf_counter()
            first, _ = await human.approvals.page(limit=100)
            page_s = time.perf_counter() - t3
            # k approvals, one at a time, spread over the parked requests while the rest wait; the
            # floor: k signals to runs parked at the same positions
            accepted_s: list[float] = []
            approval_s: list[float] = []
            signal_s: list[float] = []
            done_states: list[str] = []
            decisions: list[str] = []
            phases: list[dict[str, float]] = []
            for i in spread(len(parked), args.approvals):
                one = next(a for a in listed if a.workflow_id.endswith(f"-{parked[i]}"))
                sent_at = time.time()
                t4 = time.perf_counter()
                outcome = await human.approvals.decide(
                    one.approval_id, decision="approve", code=bench.stack.code_for(one.approval_id, email)
                )
                accepted_s.append(time.perf_counter() - t4)
                decisions.append(outcome.status)
                done = await bench.agents[-1].provisions.wait(parked[i], timeout=120)
                approval_s.append(time.perf_counter() - t4)
                code = (done.error or {}).get("code")
                done_states.append(done.state if done.state == "completed" else f"{done.state}: {code}")
                phases.append(await decision_phases(bench, one.workflow_id, sent_at))
                handle = bench.client.get_workflow_handle(floor_ids[i])
                t5 = time.perf_counter()
                await handle.signal("go")
                await handle.result()
                signal_s.append(time.perf_counter() - t5)
            await human.aclose()
        park_rate, floor_rate = len(parked) / park_s, len(floor_ids) / floor_s
        real_mem, floor_mem = max(rss2 - rss1, 1), max(rss1 - rss0, 1)
        approval = statistics.median(approval_s) / statistics.median(signal_s)
        rows = [
            ["requests parked at the terms gate (via API)", len(parked),
             f"{park_s:.1f} s ({park_rate:.1f}/s)"],
            ["floor workflows parked on a signal", len(floor_ids), f"{floor_s:.1f} s ({floor_rate:.1f}/s)"],
            ["unattended provisionings (via API), same C", unattended.n, f"{unattended.rate:.1f}/s"],
            ["worker process RSS: start -> floor parked -> real parked", "",
             f"{mib(rss0)} -> {mib(rss1)} -> {mib(rss2)}"],
            ["GET /v1/approvals, every page", len(listed), f"{list_s:.2f} s"],
            ["GET /v1/approvals, first page (100)", len(first), f"{page_s * 1000:.0f} ms"],
            ["one approval: decision accepted, median", states(decisions), ms(accepted_s)],
            ["one approval: decision -> request completed, median", states(done_states), ms(approval_s)],
            ["floor: signal -> workflow completed, median", len(signal_s), ms(signal_s)],
            *[[f"  of which {name}, median", "", ms([p[name] for p in phases])] for name in PHASES],
        ]  # fmt: skip
        if bench.server_pid:
            rows.append(["temporal server RSS", "", mib(rss_bytes(bench.server_pid))])
        table(f"waiting at scale: N={args.n} parked, C={args.c}", ["what", "count", "value"], rows, out)
        ratios = [
            ["parking / unattended throughput", f"{park_rate / unattended.rate:.2f}",
             f">= {GOALS['parking']}", met(park_rate / unattended.rate >= GOALS["parking"])],
            [f"pending-approvals list at {len(listed)} (s)", f"{list_s:.2f}", f"<= {GOALS['list']}",
             met(list_s <= GOALS["list"])],
            ["worker memory growth / floor's (same number parked)", f"{real_mem / floor_mem:.2f}",
             f"<= {GOALS['memory']}", met(real_mem / floor_mem <= GOALS["memory"])],
            ["one approval to completion / floor's signal to completion (medians)", f"{approval:.2f}",
             f"<= {GOALS['approval']}", met(approval <= GOALS["approval"])],
        ]  # fmt: skip
        table("against the goals (same run)", ["figure", "value", "goal", "met"], ratios, out)
        if unattended.failed:
            print(f"unattended failures: {sorted(set(unattended.failed))}", file=out)
        return 0


#: where one approval's time goes, from the request's own history (event times are the server's clock,
#: on this machine the benchmark's too): the decision's path to the server (API, authentication, store
#: lookup, the update call), the workflow task that carries it waiting for a worker, that task on the
#: worker (on an evicted request: the history fetched and replayed), then the request's remaining steps
PHASES = ("API to the server", "task queued", "task on the worker", "accepted to completed")


async def decision_phases(bench: Bench, workflow_id: str, sent_at: float) -> dict[str, float]:
    history = await bench.client.get_workflow_handle(workflow_id).fetch_history()
    events = list(history.events)
    at = {e.event_id: e.event_time.ToDatetime().timestamp() for e in events}
    accepted = next(
        e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    )
    before = [e for e in events if e.event_id < accepted.event_id]
    scheduled = next(
        e for e in reversed(before) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
    )
    started = next(e for e in reversed(before) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED)
    completed = next(
        e for e in reversed(before) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )
    return {
        "API to the server": at[scheduled.event_id] - sent_at,
        "task queued": at[started.event_id] - at[scheduled.event_id],
        "task on the worker": at[completed.event_id] - at[started.event_id],
        "accepted to completed": at[events[-1].event_id] - at[accepted.event_id],
    }


def spread(n: int, k: int) -> list[int]:
    """k positions spread evenly over n parked runs (the middle one when k is 1)."""
    k = max(1, min(k, n))
    return sorted({(2 * j + 1) * n // (2 * k) for j in range(k)})


def ms(samples: list[float]) -> str:
    ordered = ", ".join(f"{s * 1000:.0f}" for s in samples)
    return f"{statistics.median(samples) * 1000:.0f} ms ({ordered})"


def states(done: list[str]) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(collections.Counter(done).items()))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.waiting", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="parked requests (default 10,000)")
    p.add_argument("--c", type=int, default=50, help="submissions in flight (default 50)")
    p.add_argument("--unattended", type=int, default=100, help="unattended provisionings (default 100)")
    p.add_argument("--approvals", type=int, default=5, help="approvals timed one by one (default 5)")
    p.add_argument("--quick", action="store_true", help="N=20, C=5")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.c, args.unattended, args.approvals = 20, 5, 10, 3
    return args


def main(argv: list[str] | None = None) -> int:
    return run_script(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
