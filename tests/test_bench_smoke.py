"""Benchmark scripts in quick mode, so they cannot rot. Figures are printed, never asserted on."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment


async def test_ledger_bench_quick(client: Client) -> None:
    from bench import ledger_bench

    figures = await ledger_bench.run(client, quick=True)
    print("\n" + ledger_bench.table(figures))
    each = {"NoopEntity", "UnsandboxedNoopEntity", "SpendLedger", "SpendBooks"}
    assert {(f.scenario, f.workflow) for f in figures} == {
        *((scenario, wf) for scenario in ("1 ledger(s)", "10 ledger(s)") for wf in each),
        ("3 layers, 1", "SpendLedger"),
        ("3 layers, 1", "SpendBooks"),
    }
    assert all(f.ops > 0 and f.seconds > 0 for f in figures)


# -- the provisioning benchmarks (bench/throughput, cost, waiting, profile, api_overhead, memory,
# approvals_list, redaction, http_clients, server_ops) -------------------------------------------
# Each runs as a real `python -m bench.<name> --quick` process (exit code and printed table are what a
# user sees), against this session's dev server through TEMPORAL_ADDRESS to skip a server start.
# They all start together: they are mostly waiting on round trips, and the suite stays short.

ROOT = Path(__file__).resolve().parent.parent
BENCH_SCRIPTS = (
    "throughput", "cost", "waiting", "profile", "api_overhead", "memory", "approvals_list", "redaction",
    "http_clients", "server_ops",
)  # fmt: skip
#: a bound on a hung script, not a speed check: the ten share two cores with their own stacks, and
#: the slowest (throughput) took 88 s locally and over 120 s once in CI, on a slow hour
BENCH_TIMEOUT_SECONDS = 300
#: a quick run in flight: (exit code, output)
BenchRun = asyncio.Task[tuple[int, str]]


async def _run_bench(name: str, address: str) -> tuple[int, str]:
    env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"bench.{name}", "--quick", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=BENCH_TIMEOUT_SECONDS)
    finally:
        if proc.returncode is None:  # timed out or cancelled: leave no process behind
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.fixture(scope="module")
async def bench_runs(temporal_env: WorkflowEnvironment) -> AsyncIterator[dict[str, BenchRun]]:
    """Every quick run, started together; teardown waits for every one of them."""
    address = temporal_env.client.service_client.config.target_host
    runs = {name: asyncio.ensure_future(_run_bench(name, address)) for name in BENCH_SCRIPTS}
    yield runs
    await asyncio.gather(*runs.values(), return_exceptions=True)


def _columns_in(out: str, *names: str) -> None:
    missing = [n for n in names if n not in out]
    assert not missing, f"missing {missing} in:\n{out[-3000:]}"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("throughput", ("cpus", "cpu model", "prov/s", "p50 ms", "p95 ms", "p99 ms", "via API vs floor",
                        "cloud/workers via API", "mail/send:starter via API", "floor", "api cpu ms",
                        "p50 ms at C=1", ">= 0.80", "<= 1.50")),
        ("cost", ("events", "actions total", "minimum", "total/minimum", "<= 1.25", "activity attempts",
                  "search attribute upserts", "create_resource", "record_audit")),
        ("waiting", ("requests parked at the terms gate", "worker process RSS", "GET /v1/approvals",
                     "one approval: decision -> request completed", "completed", "against the goals",
                     "floor: signal -> workflow completed")),
        ("profile", ("wall", "worker cpu", "server cpu", "sims cpu", "top project functions")),
        ("api_overhead", ("the API's overhead", "catalog", "status", "API/direct")),
        ("memory", ("python heap KiB/run", "RSS KiB/run", "real / floor", "where the heap grew")),
        ("approvals_list", ("every page of 300", "one page of 1", "one page of 300 (limit 500)", "<= 1.0")),
        ("redaction", ("remembered", "a new secret, then a line", "4096", "ratio")),
        ("http_clients", ("client CPU per request", "httpx's transport ms", "aiohttp transport ms", "ratio")),
        ("server_ops", ("what one call costs", "describe", "update-with-start", "start and result",
                        "server / describe")),
    ],
)  # fmt: skip
async def test_provisioning_bench_quick(
    script: str, expected: tuple[str, ...], bench_runs: dict[str, BenchRun]
) -> None:
    code, out = await bench_runs[script]
    print(out)
    assert code == 0, out[-3000:]
    _columns_in(out, *expected)
