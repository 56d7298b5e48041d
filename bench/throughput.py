"""Throughput and latency of unattended provisionings through the API, as an agent sees it, against
the engine's floor.

    .venv/bin/python -m bench.throughput              # N=500 per kind, C=50; then N=20 at C=1
    .venv/bin/python -m bench.throughput --direct     # also the Orchestrator called in-process
    .venv/bin/python -m bench.throughput --quick      # a tiny N, to check it runs

The subject is an agent under `qm run`: a `QuartermasterClient` holding only its session and identity
tokens (a session the human approved through the API), calling `POST /v1/provisions?wait=25` over
real HTTP and following with `GET /v1/provisions/{id}?wait=25` until the request is finished.

Principals are prepared first through the real human steps (terms by inbox code, a card on the local
Checkout page, the paid provider's limit raised by an approved limit change), so the measured
requests reuse the connection and need no human. For each kind (free, paid) the same N requests at
concurrency C run on the real worker, and N floor workflows (same activities, each a no-op, read from
a real history of that kind) on an identical worker: the ratio of their throughputs is the figure.
Both sides run in rounds, in the order subject-floor, floor-subject, ... (`--rounds`, default 2), so
the in-memory server's growing state weighs on both alike; each round's ratio is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TextIO

from temporalio.client import WorkflowHistory
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from bench.floor import FLOOR_WORKFLOW, FloorPlan, floor_worker, plan_from_history, wft_shape
from bench.stack import (
    WORKER_OPTIONS,
    Bench,
    bench_stack,
    percentile,
    prepare_agents,
    prepare_principals,
    result_of,
    run_script,
    server_requests,
    table,
)
from workflows.search_attributes import QM_AGENT, QM_PRINCIPAL, QM_PROVIDER, QM_SERVICE, QM_STATE, State

FREE = "cloud/workers"
PAID = "mail/send:starter"
KINDS = {"free": FREE, "paid": PAID}
COLUMNS = ["kind", "path", "n", "c", "wall s", "prov/s", "p50 ms", "p95 ms", "p99 ms", "failed",
           "process cpu ms", "api cpu ms", "server cpu ms", "sims cpu ms"]  # fmt: skip
RATIO_COLUMNS = ["kind", "figure", "subject", "floor", "ratio", "goal", "met"]
#: the issue's goals (issue 21)
THROUGHPUT_GOAL = 0.8
LATENCY_GOAL = 1.5


@dataclass
class Phase:
    n: int
    c: int
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    #: the calls the server's frontend answered over the phase, by operation
    requests: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.wall if self.wall else 0.0

    def ratio_to(self, other: Phase) -> float:
        """This phase's throughput over `other`'s (0 when `other` has none)."""
        return self.rate / other.rate if other.rate else 0.0

    def row(self, kind: str, workflow: str) -> list[object]:
        ms = [f"{percentile(self.latencies, p) * 1000:.0f}" for p in (50, 95, 99)]
        per = [
            f"{self.cpu.get(k, 0.0) / self.n * 1000:.1f}"
            for k in ("worker process", "api", "temporal server", "simulators")
        ]
        return [
            kind,
            workflow,
            self.n,
            self.c,
            f"{self.wall:.1f}",
            f"{self.rate:.1f}",
            *ms,
            len(self.failed),
            *per,
        ]


def failure_name(exc: Exception) -> str:
    """A failed job as the table names it: the exception's class, and an API error's code and status."""
    name = type(exc).__name__
    code, status = getattr(exc, "code", None), getattr(exc, "status", None)
    if code is not None:
        name += f" {code}" + (f" (HTTP {status})" if status is not None else "")
    return name


async def run_phase(bench: Bench, n: int, c: int, job: Callable[[int], Awaitable[str | None]]) -> Phase:
    """Run `job(i)` for i in 0..n-1, at most `c` at once; `job` returns None or a failure code."""
    phase = Phase(n=n, c=c)
    indices = iter(range(n))

    async def slot() -> None:
        for i in indices:
            t0 = time.perf_counter()
            try:
                error = await job(i)
            except Exception as exc:  # a benchmark counts failures; it does not stop on them
                error = failure_name(exc)
            phase.latencies.append(time.perf_counter() - t0)
            if error:
                phase.failed.append(error)

    requests0 = server_requests(bench.server_metrics)
    cpu0 = bench.cpu()
    t0 = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(c)))
    phase.wall = time.perf_counter() - t0
    phase.cpu = {k: v - cpu0.get(k, 0.0) for k, v in bench.cpu().items()}
    requests = server_requests(bench.server_metrics)
    phase.requests = {op: n - requests0.get(op, 0.0) for op, n in requests.items()}
    return phase


def merged(phases: list[Phase]) -> Phase:
    """Several phases of one path as one: their provisionings, time, CPU and server calls summed."""
    out = Phase(n=sum(p.n for p in phases), c=phases[0].c)
    for p in phases:
        out.wall += p.wall
        out.latencies += p.latencies
        out.failed += p.failed
        for k, v in p.cpu.items():
            out.cpu[k] = out.cpu.get(k, 0.0) + v
        for op, v in p.requests.items():
            out.requests[op] = out.requests.get(op, 0.0) + v
    return out


async def interleaved(
    bench: Bench,
    n: int,
    c: int,
    rounds: int,
    subject: Callable[[int], Awaitable[str | None]],
    floor: Callable[[int], Awaitable[str | None]],
) -> tuple[Phase, Phase, list[float]]:
    """The subject and the floor, N each in `rounds` rounds, in the order subject-floor, floor-subject,
    ... (ABBA): the server's growing state (every run so far, kept in memory) weighs on both sides
    alike instead of on whichever runs second. Returns both merged, and each round's ratio."""
    sizes = [n // rounds + (1 if r < n % rounds else 0) for r in range(rounds)]
    mine: list[Phase] = []
    theirs: list[Phase] = []
    for r, size in enumerate(sizes):
        if r % 2 == 0:
            mine.append(await run_phase(bench, size, c, subject))
            theirs.append(await run_phase(bench, size, c, floor))
        else:
            theirs.append(await run_phase(bench, size, c, floor))
            mine.append(await run_phase(bench, size, c, subject))
    ratios = [a.ratio_to(b) for a, b in zip(mine, theirs, strict=True)]
    return merged(mine), merged(theirs), ratios


def request_rows(kind: str, real: Phase, floor: Phase) -> list[list[object]]:
    """Server calls per provisioning by operation, subject beside floor, and their totals."""
    per = {
        op: (real.requests.get(op, 0.0) / real.n, floor.requests.get(op, 0.0) / floor.n)
        for op in sorted({*real.requests, *floor.requests})
    }
    rows: list[list[object]] = [
        [kind, op, f"{a:.2f}", f"{b:.2f}"] for op, (a, b) in per.items() if max(a, b) >= 0.05
    ]
    total = [sum(v[i] for v in per.values()) for i in (0, 1)]
    return [*rows, [kind, "all operations", f"{total[0]:.2f}", f"{total[1]:.2f}"]]


def real_job(bench: Bench, service: str) -> Callable[[int], Awaitable[str | None]]:
    stack = bench.stack

    async def job(i: int) -> str | None:
        req = stack.request(service, bench.principals[i % len(bench.principals)])
        await stack.qm.submit(req)
        res = await result_of(stack, req.request_id)
        return None if res.outcome == "completed" else res.error_code or res.outcome

    return job


def api_job(bench: Bench, service: str) -> Callable[[int], Awaitable[str | None]]:
    """An agent's provisioning through the API: create with a long poll, follow until finished."""

    async def job(i: int) -> str | None:
        agent = bench.agents[i % len(bench.agents)]
        request_id = uuid.uuid4().hex[:16]
        view = await agent.provisions.create(
            service_id=service, name=f"b{request_id[:8]}", request_id=request_id, wait=25
        )
        if view.state == "running":
            view = await agent.provisions.wait(request_id, timeout=600)
        if view.state == "completed":
            return None
        return (view.error or {}).get("code") or view.state

    return job


def floor_job(
    bench: Bench, service: str, plan: FloorPlan, task_queue: str
) -> Callable[[int], Awaitable[str | None]]:
    async def job(i: int) -> str | None:
        principal = bench.stack.principal_id(bench.principals[i % len(bench.principals)])
        attrs = TypedSearchAttributes(
            [
                SearchAttributePair(QM_STATE, State.RUNNING),
                SearchAttributePair(QM_PROVIDER, service.split("/", 1)[0]),
                SearchAttributePair(QM_SERVICE, service),
                SearchAttributePair(QM_AGENT, "planner"),
                SearchAttributePair(QM_PRINCIPAL, principal),
            ]
        )
        handle = await bench.client.start_workflow(
            FLOOR_WORKFLOW, plan, id=f"floor-{uuid.uuid4().hex[:16]}", task_queue=task_queue,
            search_attributes=attrs, static_summary=f"floor of {service}", result_type=int,
        )  # fmt: skip
        done = await handle.result()
        return None if done == len(plan.steps) else "FLOOR_SHORT"

    return job


async def sample_history(bench: Bench, service: str) -> WorkflowHistory:
    """One unattended provisioning of `service` (not measured): its history is the floor's plan."""
    req = bench.stack.request(service, bench.principals[0])
    await bench.stack.qm.submit(req)
    res = await result_of(bench.stack, req.request_id)
    assert res.outcome == "completed", res
    return await bench.client.get_workflow_handle(f"provision-{req.request_id}").fetch_history()


async def measure(args: argparse.Namespace, out: TextIO) -> int:
    async with bench_stack(sims=args.sims, api=args.api) as bench:
        t0 = time.perf_counter()
        principals = args.principals or min(args.c, args.n)
        await prepare_principals(bench, principals, paid=PAID, free=FREE)
        await prepare_agents(bench)
        print(f"\nprepared {principals} principals in {time.perf_counter() - t0:.1f} s "
              "(terms + card + limit through the human steps; a session and an attested agent each)",
              file=out)  # fmt: skip
        rows: list[list[object]] = []
        ratios: list[list[object]] = []
        calls: list[list[object]] = []
        floor_queue = f"{bench.stack.settings.task_queue}-floor"
        async with floor_worker(bench.client, floor_queue, WORKER_OPTIONS):
            for kind, service in KINDS.items():
                if args.kind not in ("both", kind):
                    continue
                history = await sample_history(bench, service)
                plan = plan_from_history(history)
                floor_of = floor_job(bench, service, plan, floor_queue)
                await run_phase(bench, 1, 1, floor_of)  # warm
                await run_phase(bench, min(args.c, 10), min(args.c, 10), api_job(bench, service))  # warm
                real, floor, per_round = await interleaved(
                    bench, args.n, args.c, args.rounds, api_job(bench, service), floor_of
                )
                rows += [real.row(kind, f"{service} via API"), floor.row(kind, "floor")]
                if args.direct:
                    direct = await run_phase(bench, args.n, args.c, real_job(bench, service))
                    rows.append(direct.row(kind, f"{service} direct"))
                one = await run_phase(bench, args.n1, 1, api_job(bench, service))
                one_floor = await run_phase(bench, args.n1, 1, floor_of)
                rows += [one.row(kind, f"{service} via API"), one_floor.row(kind, "floor")]
                same = await _same_shape(bench, history, plan, floor_queue)
                ratio = real.ratio_to(floor)
                rounds_label = (
                    f"  each of {len(per_round)} rounds (ABBA)" if len(per_round) > 1 else "  one round"
                )
                p50 = percentile(one.latencies, 50) / percentile(one_floor.latencies, 50)
                ratios += [
                    [kind, f"prov/s at C={args.c}", f"{real.rate:.1f}", f"{floor.rate:.1f}", f"{ratio:.2f}",
                     f">= {THROUGHPUT_GOAL:.2f}", "yes" if ratio >= THROUGHPUT_GOAL else "no"],
                    [kind, rounds_label, "", "",
                     " ".join(f"{r:.2f}" for r in per_round), "", ""],
                    [kind, "p50 ms at C=1", f"{percentile(one.latencies, 50) * 1000:.0f}",
                     f"{percentile(one_floor.latencies, 50) * 1000:.0f}", f"{p50:.2f}",
                     f"<= {LATENCY_GOAL:.2f}", "yes" if p50 <= LATENCY_GOAL else "no"],
                ]  # fmt: skip
                # throughput is CPU-bound on a small machine: the CPU of all processes says why
                cpu_real, cpu_floor = (sum(p.cpu.values()) / p.n * 1000 for p in (real, floor))
                ratios.append([kind, f"CPU ms/prov at C={args.c}, all processes", f"{cpu_real:.0f}",
                               f"{cpu_floor:.0f}", f"{cpu_floor / cpu_real:.2f}" if cpu_real else "-",
                               "(floor/subject)", ""])  # fmt: skip
                calls += request_rows(kind, real, floor)
                print(f"{kind}: floor has {len(plan.steps)} activities, wft shape same: "
                      f"{'yes' if same else 'no'}", file=out)  # fmt: skip
                for phase, name in ((real, service), (floor, "floor"), (one, f"{service} C=1")):
                    if phase.failed:
                        print(f"{kind} {name}: failures {sorted(set(phase.failed))}", file=out)
        table(
            f"throughput and end-to-end latency (agent: create -> completed), N={args.n} at C={args.c}, "
            f"N={args.n1} at C=1",
            COLUMNS,
            rows,
            out,
        )
        where = (
            "the API's own process"
            if args.api == "process"
            else "the API's uvicorn thread, inside this process's figure"
        )
        print("cpu ms = CPU milliseconds per provisioning over the phase: this process (worker, bench "
              f"client, gateway routes); the API ({where}); the dev server; the simulators",
              file=out)  # fmt: skip
        table(
            "via API vs floor (same activities as no-ops, started directly, same server and worker options)",
            RATIO_COLUMNS,
            ratios,
            out,
        )
        if calls:
            table(
                f"server calls per provisioning at C={args.c}: the dev server's frontend, by operation "
                "(its Prometheus service_requests)",
                ["kind", "operation", "via API", "floor"],
                calls,
                out,
            )
        return 0


async def _same_shape(bench: Bench, real: WorkflowHistory, plan: FloorPlan, task_queue: str) -> bool:
    """Does one floor run group its activities into workflow tasks like the real history?"""
    handle = await bench.client.start_workflow(
        FLOOR_WORKFLOW,
        plan,
        id=f"floor-shape-{uuid.uuid4().hex[:12]}",
        task_queue=task_queue,
        result_type=int,
    )
    await handle.result()
    return wft_shape(await handle.fetch_history()) == wft_shape(real)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500, help="provisionings per kind (default 500)")
    p.add_argument("--c", type=int, default=50, help="concurrency (default 50)")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds each side's N is split into, in ABBA order; an even number balances it "
        "(default 2; 1: subject then floor; --quick runs 2)",
    )
    p.add_argument("--n1", type=int, default=20, help="provisionings per kind at C=1 (default 20)")
    p.add_argument("--kind", choices=["both", "free", "paid"], default="both", help="which kinds")
    p.add_argument("--direct", action="store_true", help="also the Orchestrator in-process (no API)")
    p.add_argument("--principals", type=int, default=0, help="prepared principals (default: C)")
    p.add_argument("--sims", choices=["process", "thread"], default="process",
                   help="simulators in a child process (default) or in threads of this process")  # fmt: skip
    p.add_argument("--api", choices=["process", "thread"], default="process",
                   help="the API in its own process, as deployed (default), or in a thread here")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="N=4, C=2: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.c, args.n1, args.rounds = 4, 2, 2, 2
    if args.n < 1 or not 1 <= args.rounds <= args.n:
        p.error("--n must be at least 1, and --rounds between 1 and --n")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_script(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
