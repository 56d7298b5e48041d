"""Where the time of an unattended provisioning goes: worker process, Temporal server, simulators.

    .venv/bin/python -m bench.profile             # 5 sequential + 40 concurrent (C=10) of each kind
    .venv/bin/python -m bench.profile --quick     # 1 sequential + 4 concurrent (C=2)
    .venv/bin/python -m bench.profile --api       # the concurrent runs by agents through the API
    .venv/bin/python -m bench.profile --floor     # the concurrent runs are the floor's, to compare

1. Sequential runs give one provisioning's wall time and the CPU each process spent on it (from
   /proc): what is not CPU is waiting (round trips, task dispatch, the simulators' own delays).
2. Concurrent runs are sampled with py-spy (threads holding the GIL, in the worker process, the
   simulators' process and the API's): samples are split by what the thread was doing (workflow
   tasks in the sandbox, activities, the gateway, the rest) and the top functions are listed, project
   code first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from bench.floor import floor_worker, plan_from_history
from bench.stack import (
    WORKER_OPTIONS,
    Bench,
    bench_stack,
    prepare_agents,
    prepare_principals,
    print_machine,
    quiet_stdout,
    result_of,
    table,
)
from bench.throughput import KINDS, api_job, floor_job, real_job, run_phase, sample_history

PY_SPY = Path(sys.executable).parent / "py-spy"
ROOT = str(Path(__file__).resolve().parent.parent) + "/"
PROJECT = tuple(
    ROOT + d for d in ("workflows/", "activities/", "providers/", "quartermaster/", "models/", "worker.py")
)


def where(stack: list[str]) -> str:
    """What a sampled thread was doing, from its frames (root first)."""
    text = ";".join(stack)
    if "_workflow_instance.py" in text or "workflow_sandbox" in text:
        return "workflow tasks (sandbox)"
    if "temporalio/worker/_activity.py" in text:
        return "activities"
    if "uvicorn" in text or "starlette" in text:
        return "HTTP servers (uvicorn)"
    if "temporalio/worker/_workflow.py" in text:
        return "workflow activations (codec, converter)"
    return "event loop, client, SDK bridge"


def frame_name(frame: str) -> str:
    """'func (/path/to/file.py)' -> 'func (file relative to the project or site-packages)'."""
    name, _, path = frame.partition(" (")
    path = path.rstrip(")")
    for marker in ("site-packages/", ROOT, "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


class Samples:
    def __init__(self, path: Path) -> None:
        self.total = 0
        self.by_where: Counter[str] = Counter()
        self.self_time: Counter[str] = Counter()
        self.project_inclusive: Counter[str] = Counter()
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [
                f
                for f in stack_text.split(";")
                if f and not f.startswith("thread (") and not f.startswith("process ")
            ]
            if not frames:
                continue
            self.total += count
            self.by_where[where(frames)] += count
            self.self_time[frame_name(frames[-1])] += count
            seen = {frame_name(f) for f in frames if any(p in f for p in PROJECT)}
            for name in seen:
                self.project_inclusive[name] += count


def shares(counter: Counter[str], total: int, top: int | None = None) -> list[list[object]]:
    return [[k, v, f"{v / total:.0%}"] for k, v in counter.most_common(top)]


def spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", str(out),
         "--nolineno", "--full-filenames", "--nonblocking", "--gil"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def stop_spy(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    for _ in range(200):
        if proc.poll() is not None:
            return
        await asyncio.sleep(0.05)
    proc.kill()


async def sequential(bench: Bench, service: str, k: int) -> list[object]:
    """k provisionings one after the other: per provisioning wall time and CPU per process."""
    walls: list[float] = []
    cpu0 = bench.cpu()
    for i in range(k):
        t0 = time.perf_counter()
        req = bench.stack.request(service, bench.principals[i % len(bench.principals)])
        await bench.stack.qm.submit(req)
        res = await result_of(bench.stack, req.request_id)
        assert res.outcome == "completed", res
        walls.append(time.perf_counter() - t0)
    cpu = {key: (v - cpu0.get(key, 0.0)) / k * 1000 for key, v in bench.cpu().items()}
    wall = sum(walls) / k * 1000
    busy = sum(cpu.values())
    return [f"{wall:.0f}", f"{cpu.get('worker process', 0):.0f}", f"{cpu.get('temporal server', 0):.0f}",
            f"{cpu.get('simulators', 0):.0f}", f"{max(0.0, wall - busy):.0f}"]  # fmt: skip


async def measure(args: argparse.Namespace, out: TextIO) -> int:
    async with bench_stack() as bench:
        await prepare_principals(bench, max(2, args.c), paid=KINDS["paid"], free=KINDS["free"])
        if args.api:
            await prepare_agents(bench)
        kinds = {k: v for k, v in KINDS.items() if args.kind in ("both", k)}
        seq_rows: list[list[object]] = []
        for kind, service in kinds.items():
            await sequential(bench, service, 1)  # warm
            seq_rows.append([kind, service, *await sequential(bench, service, args.k)])
        table(f"one provisioning, sequential (mean of {args.k}): milliseconds",
              ["kind", "service", "wall", "worker cpu", "server cpu", "sims cpu", "waiting (wall - cpu)"],
              seq_rows, out)  # fmt: skip
        if not PY_SPY.exists():
            print("py-spy is not installed (pip install -e '.[dev]'): no sampled profile", file=out)
            return 0
        if not args.floor:
            jobs = [api_job(bench, s) if args.api else real_job(bench, s) for s in kinds.values()]
            return await _sampled(bench, args, kinds, jobs, out)
        floor_queue = f"{bench.stack.settings.task_queue}-floor"
        async with floor_worker(bench.client, floor_queue, WORKER_OPTIONS):  # only when sampled
            jobs = []
            for service in kinds.values():  # the same activities as no-ops, planned from a real history
                plan = plan_from_history(await sample_history(bench, service))
                jobs.append(floor_job(bench, service, plan, floor_queue))
                await run_phase(bench, 1, 1, jobs[-1])  # warm
            return await _sampled(bench, args, kinds, jobs, out)


async def _sampled(
    bench: Bench,
    args: argparse.Namespace,
    kinds: dict[str, str],
    jobs: list[Callable[[int], Awaitable[str | None]]],
    out: TextIO,
) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = Path(args.raw or tmp)  # made by main()
        worker_raw, sims_raw, api_raw = raw_dir / "worker.txt", raw_dir / "sims.txt", raw_dir / "api.txt"
        spies = [spy(os.getpid(), worker_raw)]
        if bench.sims_pid:
            spies.append(spy(bench.sims_pid, sims_raw))
        if bench.api_pid:
            spies.append(spy(bench.api_pid, api_raw))
        await asyncio.sleep(0.5)  # let py-spy attach
        cpu0 = bench.cpu()
        for job in jobs:
            await run_phase(bench, args.n, args.c, job)
        cpu = {k: v - cpu0.get(k, 0.0) for k, v in bench.cpu().items()}
        for proc in spies:
            await stop_spy(proc)
        worker, sims, api = Samples(worker_raw), Samples(sims_raw), Samples(api_raw)
    total_cpu = sum(cpu.values()) or 1.0
    table(f"CPU by process over {len(kinds) * args.n} concurrent provisionings (C={args.c})",
          ["process", "cpu s", "share"],
          [[k, f"{v:.1f}", f"{v / total_cpu:.0%}"] for k, v in cpu.items()], out)  # fmt: skip
    cols = ["function", "samples", "share"]
    if worker.total:
        table("worker process, Python samples by activity (py-spy)", ["what", "samples", "share"],
              shares(worker.by_where, worker.total), out)  # fmt: skip
        table("worker process: top project functions (inclusive)", cols,
              shares(worker.project_inclusive, worker.total, args.top), out)  # fmt: skip
        table(
            "worker process: top functions (self)",
            cols,
            shares(worker.self_time, worker.total, args.top),
            out,
        )
    if sims.total:
        table("simulators process: top project functions (inclusive)", cols,
              shares(sims.project_inclusive, sims.total, 8), out)  # fmt: skip
    if api.total:
        table("API process: top project functions (inclusive)", cols,
              shares(api.project_inclusive, api.total, args.top), out)  # fmt: skip
        table("API process: top functions (self)", cols, shares(api.self_time, api.total, args.top), out)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, default=5, help="sequential provisionings per kind (default 5)")
    p.add_argument("--n", type=int, default=40, help="sampled concurrent provisionings per kind (default 40)")
    p.add_argument("--c", type=int, default=10, help="concurrency of the sampled runs (default 10)")
    p.add_argument("--top", type=int, default=15, help="functions listed (default 15)")
    p.add_argument(
        "--raw", default=None, help="keep py-spy's raw samples (worker.txt, sims.txt, api.txt) in this folder"
    )
    p.add_argument("--api", action="store_true", help="sample agents through the API (default: in-process)")
    p.add_argument(
        "--floor",
        action="store_true",
        help="sample the floor instead (its no-op activities, started directly)",
    )
    p.add_argument("--kind", choices=["both", "free", "paid"], default="both", help="which kinds")
    p.add_argument("--quick", action="store_true", help="k=1, n=4, c=2")
    args = p.parse_args(argv)
    if args.quick:
        args.k, args.n, args.c = 1, 4, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.raw:
        Path(args.raw).mkdir(parents=True, exist_ok=True)
    with quiet_stdout() as out:
        print_machine(out)
        return asyncio.run(measure(args, out))


if __name__ == "__main__":
    raise SystemExit(main())
