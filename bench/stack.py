"""The embedded stack for the benchmarks, and what they share: machine facts, CPU/RSS readings, tables,
and preparing principals (terms accepted, card on file, limit raised) through the real human steps.

The stack is the one the end-to-end tests use (`tests.fixtures.stack.open_stack`): the local Stripe
server, the three provider simulators, the gateway and the worker from `worker.build_worker`. The
Temporal dev server comes from the venv's `temporal` binary unless TEMPORAL_ADDRESS points elsewhere.
By default the simulators run in a child process, as remote providers would, and the API that agents
and humans call runs as its own process (`python -m quartermaster.api`, as `qm dev` and a deployment
run it) on the same data directory, store and Temporal server: the benchmark's process then holds the
worker, the gateway routes (callbacks, webhooks) and the benchmark's client, and CPU is accounted per
process. `api="thread"` keeps the API in a thread of this process, under one interpreter lock with
the worker and the client: the layout of every figure measured before this option existed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import platform
import re
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

import httpx
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from models.limits import LimitChangeResult
from models.money import Money
from models.provisioning import ProvisionResult
from quartermaster.client import QuartermasterClient
from quartermaster.codec import EncryptionCodec
from quartermaster.config import Settings
from quartermaster.converter import data_converter
from quartermaster.identity.attestation import measure
from quartermaster.keys import Keyring
from quartermaster.logging_setup import configure_logging, quiet_http_client_logs
from quartermaster.temporal import connect
from tests.fixtures.hosts import server_env, start_api, wait_until_ready
from tests.fixtures.servers import free_port
from tests.fixtures.stack import SimulatorURLs, Stack, new_email, open_stack, serve_simulators
from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES

BIN = Path(sys.executable).parent
#: identical for the real worker and the floor worker
WORKER_OPTIONS: dict[str, Any] = {
    "max_concurrent_activities": 200,
    "max_concurrent_workflow_tasks": 100,
    "max_cached_workflows": 1000,
}
DEV_SERVER_ARGS = [
    "--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true",
    "--dynamic-config-value", "frontend.enableExecuteMultiOperation=true",
]  # fmt: skip
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- machine, processes ------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    """What the figures ran on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    server = "external (TEMPORAL_ADDRESS)" if os.environ.get("TEMPORAL_ADDRESS") else "dev server"
    cli = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        cli = subprocess.run(
            [str(BIN / "temporal"), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    return {
        "cpus": str(os.cpu_count()),
        "cpu model": model,
        "python": platform.python_version(),
        "temporalio": metadata.version("temporalio"),
        "temporal": f"{cli} [{server}]",
        "worker options": ", ".join(f"{k}={v}" for k, v in WORKER_OPTIONS.items()),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu_seconds(native_ids: Sequence[int]) -> float:
    """User + system CPU time of some threads of this process, from /proc/self/task."""
    total = 0.0
    for tid in native_ids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (VmRSS), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def child_pids(name: str) -> list[int]:
    """Direct children of this process whose command name starts with `name`."""
    me, out = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            if int(stat.rsplit(")", 1)[1].split()[1]) == me and comm.startswith(name):
                out.append(int(entry.name))
    return out


# -- output ---------------------------------------------------------------------------------------
def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """A plain fixed-width table."""
    cells = [[str(c) for c in columns], *[[str(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    print(f"\n{title}", file=out)
    for n, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)
    out.flush()


def print_machine(out: TextIO) -> None:
    table("machine", ["what", "value"], list(machine().items()), out)


def run_script(
    measure: Callable[[argparse.Namespace, TextIO], Awaitable[int]], args: argparse.Namespace
) -> int:
    """A benchmark script's main: the machine table, then `measure`, with the inbox's prints muted."""
    with quiet_stdout() as out:
        print_machine(out)
        return asyncio.run(measure(args, out))


@contextlib.contextmanager
def quiet_stdout() -> Iterator[TextIO]:
    """The inbox notifier prints each approval to stdout: keep the tables readable. Yields the real stdout."""
    real = sys.stdout
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield real


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- the stack --------------------------------------------------------------------------------------
def _simulators_child(data_dir: Path, public_url: str, webhook_secret: str, conn: Connection) -> None:
    """Child process: serve the simulators until the parent says stop (or goes away)."""
    with serve_simulators(data_dir, public_url, webhook_secret) as urls:
        conn.send(urls)
        with contextlib.suppress(EOFError):
            conn.recv()


@contextlib.contextmanager
def simulators_in_child(
    data_dir: Path, public_url: str, webhook_secret: str
) -> Iterator[tuple[SimulatorURLs, int]]:
    """Run `serve_simulators` in a spawned child process; yields (URLs, child pid)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_simulators_child, args=(data_dir, public_url, webhook_secret, child), name="qm-bench-sims"
    )
    proc.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the simulators did not start within 60 s")
        urls: SimulatorURLs = parent.recv()
        assert proc.pid is not None
        yield urls, proc.pid
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        proc.join(timeout=15)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)


@dataclass
class Bench:
    """A running stack plus what the benchmarks read about it."""

    stack: Stack
    client: Client
    keyring: Keyring
    server_pid: int | None
    sims_pid: int | None
    principals: list[str] = field(default_factory=list)
    #: native thread ids of the in-process API's uvicorn thread (api="thread" only)
    api_threads: list[int] = field(default_factory=list)
    #: the API agents and humans call (its own process unless api="thread")
    api_url: str = ""
    api_pid: int | None = None
    #: the dev server's Prometheus metrics ("" on TEMPORAL_ADDRESS)
    server_metrics: str = ""
    #: one agent client per principal (session + identity tokens, as `qm run` injects them)
    agents: list[QuartermasterClient] = field(default_factory=list)
    #: tasks attesting fresh identities for long-running agents (`agent_client(renew_every=...)`)
    renewers: list[asyncio.Task[None]] = field(default_factory=list)

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: this process (worker, gateway, bench client), the API (its process, or
        its thread inside this process's figure), the server, the simulators."""
        out = {"worker process": cpu_seconds(os.getpid())}
        if self.api_pid:
            out["api"] = cpu_seconds(self.api_pid)
        elif self.api_threads:
            out["api"] = thread_cpu_seconds(self.api_threads)
        if self.server_pid:
            out["temporal server"] = cpu_seconds(self.server_pid)
        if self.sims_pid:
            out["simulators"] = cpu_seconds(self.sims_pid)
        return out


@asynccontextmanager
async def temporal_client(keyring: Keyring) -> AsyncIterator[tuple[Client, int | None, str]]:
    """A client on TEMPORAL_ADDRESS if set, else on a fresh dev server (yields its pid and the URL of
    its Prometheus metrics too)."""
    if os.environ.get("TEMPORAL_ADDRESS"):
        yield await connect(Settings(data_dir=Path(tempfile.gettempdir())), keyring), None, ""
        return
    metrics_port = free_port()
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter(EncryptionCodec(keyring)),
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
        dev_server_extra_args=[*DEV_SERVER_ARGS, "--metrics-port", str(metrics_port)],
    )
    try:
        pids = child_pids("temporal")
        yield env.client, (pids[0] if pids else None), f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        await env.shutdown()


#: one line of the server's Prometheus text: the calls its frontend answered, by operation
_FRONTEND_REQUESTS = re.compile(
    r'^service_requests\{namespace="default",operation="(?P<op>\w+)",service_name="frontend"\} (?P<n>\S+)$',
    re.MULTILINE,
)


def server_requests(metrics_url: str) -> dict[str, float]:
    """The calls the server's frontend has answered so far in the default namespace, by operation."""
    if not metrics_url:
        return {}
    text = httpx.get(metrics_url, timeout=10).text
    return {m["op"]: float(m["n"]) for m in _FRONTEND_REQUESTS.finditer(text)}


@contextlib.contextmanager
def api_in_child(stack: Stack, client: Client) -> Iterator[tuple[str, int]]:
    """`python -m quartermaster.api` on the stack's data directory, keys, store and task queue; yields
    (its URL, its pid). The stack's own API keeps serving the gateway routes (public URL)."""
    settings = stack.settings
    env = server_env(
        data_dir=settings.data_dir, keys_file=settings.data_dir / "keys.json",
        temporal_address=client.service_client.config.target_host, task_queue=settings.task_queue,
        public_url=settings.public_url or stack.api_url, providers=stack.provider_urls,
        stripe_url=stack.stripe_url, webhook_secret=settings.stripe_webhook_secret or "",
        database_url=settings.database_url,
    )  # fmt: skip
    host = start_api(env, "bench-api", free_port())
    try:
        wait_until_ready(host)
        assert host.url is not None
        yield host.url, host.proc.pid
    finally:
        host.proc.terminate()
        try:
            host.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            host.proc.kill()


@asynccontextmanager
async def bench_stack(
    *,
    sims: str = "process",
    api: str = "process",
    worker_options: dict[str, Any] | None = None,
    approval_timeout_seconds: int = 3600,
) -> AsyncIterator[Bench]:
    """The whole stack, on a fresh data dir and a fresh keyring. This process logs as `worker.main` does
    (INFO, the HTTP clients' line per call left out): a library's `basicConfig` would otherwise leave
    every provider and Stripe call logging here at INFO, which the deployed worker does not pay for."""
    configure_logging(logging.INFO)
    quiet_http_client_logs()
    keyring = Keyring.generate()
    with tempfile.TemporaryDirectory(prefix="qm-bench-") as tmp:
        data_dir = Path(tmp)
        async with temporal_client(keyring) as (client, server_pid, server_metrics):
            gateway_port = free_port()
            webhook_secret = "whsec_" + secrets.token_hex(16)
            with contextlib.ExitStack() as stack_of:
                sims_pid: int | None = None
                urls: SimulatorURLs | None = None
                if sims == "process":
                    urls, sims_pid = stack_of.enter_context(
                        simulators_in_child(data_dir, f"http://127.0.0.1:{gateway_port}", webhook_secret)
                    )
                options = worker_options if worker_options is not None else WORKER_OPTIONS
                before = {t.ident for t in threading.enumerate()}
                async with open_stack(
                    client, keyring, data_dir, gateway_port=gateway_port, webhook_secret=webhook_secret,
                    simulators=urls, worker_options=options,
                    approval_timeout_seconds=approval_timeout_seconds,
                ) as stack:  # fmt: skip
                    uvicorn_threads = [
                        t.native_id for t in threading.enumerate()
                        if t.ident not in before and t.name.endswith("(run)") and t.native_id
                    ]  # fmt: skip
                    bench = Bench(
                        stack=stack, client=client, keyring=keyring, server_pid=server_pid,
                        sims_pid=sims_pid, api_threads=uvicorn_threads, api_url=stack.api_url,
                        server_metrics=server_metrics,
                    )  # fmt: skip
                    if api == "process":
                        bench.api_url, bench.api_pid = stack_of.enter_context(api_in_child(stack, client))
                        bench.api_threads = []
                    try:
                        yield bench
                    finally:
                        for task in bench.renewers:
                            task.cancel()
                        await asyncio.gather(*bench.renewers, return_exceptions=True)
                        for agent in bench.agents:
                            await agent.aclose()


# -- principals ---------------------------------------------------------------------------------------
async def result_of(stack: Stack, request_id: str, timeout: float = 120) -> ProvisionResult:
    handle = stack.client.get_workflow_handle(f"provision-{request_id}", result_type=ProvisionResult)
    return await asyncio.wait_for(handle.result(), timeout)


async def raise_limit(stack: Stack, email: str, provider: str, usd: int) -> None:
    """`qm billing set-limit`: start the limit change, answer its approval with the inbox code."""
    wid, approval_id = await stack.qm.request_limit_change(
        email=email, limit=Money(amount=usd * 100), provider=provider
    )
    handle = stack.client.get_workflow_handle(wid, result_type=LimitChangeResult)
    await until(lambda: any(m.get("approval_id") == approval_id for m in stack.inbox(email)))
    outcome = await stack.decide(approval_id, email)
    assert outcome.status == "ACCEPTED", outcome
    result: LimitChangeResult = await handle.result()
    assert result.status == "applied", result


async def until(check: Any, timeout: float = 60) -> None:
    """Poll `check()` until true (local reads only: files, counters)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.05)


async def onboard(stack: Stack, email: str, service_id: str, *, card: bool) -> ProvisionResult:
    """One provisioning through the human gates: terms (inbox code), and a card on the Checkout page."""
    req = stack.request(service_id, email)
    await stack.qm.submit(req)
    terms = await stack.wait_for_approval(req.request_id, "terms", timeout=60)
    assert (await stack.decide(terms["approval_id"], email)).status == "ACCEPTED"
    if card:
        pm = await stack.wait_for_approval(req.request_id, "payment_method", timeout=60)
        await stack.attach_card(pm["details"]["checkout_url"])
    res = await result_of(stack, req.request_id)
    assert res.outcome == "completed", res
    return res


async def prepare_principal(stack: Stack, paid: str | None, free: str | None, limit_usd: int) -> str:
    """A principal who accepted both providers' terms, has a card on file and a raised limit at the
    paid provider: from now on its requests need no human step."""
    email = new_email()
    if paid is not None:
        await raise_limit(stack, email, paid.split("/", 1)[0], limit_usd)
        await onboard(stack, email, paid, card=True)
    if free is not None:
        await onboard(stack, email, free, card=False)
    return email


async def prepare_principals(
    bench: Bench, count: int, paid: str | None, free: str | None, limit_usd: int = 1_000_000
) -> list[str]:
    """`count` prepared principals, prepared concurrently (at most 10 at a time)."""
    gate = asyncio.Semaphore(10)

    async def one() -> str:
        async with gate:
            return await prepare_principal(bench.stack, paid, free, limit_usd)

    bench.principals = list(await asyncio.gather(*(one() for _ in range(count))))
    return bench.principals


async def human_client(bench: Bench, email: str) -> QuartermasterClient:
    """A human's client on the API agents call, logged in the way `qm login` does it."""
    return QuartermasterClient(bench.api_url, human_token=await bench.stack.login_token(email))


async def agent_client(
    bench: Bench, email: str, agent: str = "planner", *, renew_every: float | None = None
) -> QuartermasterClient:
    """What `qm run` gives an agent: a session the human approved through the API (any service, a
    budget no benchmark reaches) and an attested identity; the client holds only those two tokens.
    Identity tokens live 10 minutes: with `renew_every`, the human attests a fresh one that often
    (as `qm run` does for a long-lived agent), for runs longer than that."""
    human = await human_client(bench, email)
    try:
        sid = await bench.stack.open_session(
            human, email, agent, allowed_services=["*"], budget=Money(amount=10**8, currency="usd")
        )

        async def attest() -> tuple[str, str]:
            got = await human.identities.attest(
                agent=agent, measurement=measure(["true"]).model_dump(mode="json"), session_id=sid
            )
            assert got.session_token is not None, "an identity attested for a session carries its token"
            return got.session_token, got.identity_token

        session_token, identity = await attest()
    except BaseException:
        await human.aclose()
        raise
    if renew_every is None:
        await human.aclose()
        return QuartermasterClient(bench.api_url, session_token=session_token, identity_token=identity)
    current = [identity]

    async def renew() -> None:
        try:
            while True:
                await asyncio.sleep(renew_every)
                current[0] = (await attest())[1]
        finally:
            await human.aclose()

    bench.renewers.append(asyncio.get_running_loop().create_task(renew()))
    return QuartermasterClient(bench.api_url, session_token=session_token, identity_token=lambda: current[0])


async def prepare_agents(bench: Bench) -> list[QuartermasterClient]:
    """An agent client for every prepared principal (at most 10 prepared at a time)."""
    gate = asyncio.Semaphore(10)

    async def one(email: str) -> QuartermasterClient:
        async with gate:
            return await agent_client(bench, email)

    bench.agents = list(await asyncio.gather(*(one(e) for e in bench.principals)))
    return bench.agents
