"""The client CPU of one HTTP request: httpx's own transport against the aiohttp transport under
Quartermaster's clients (quartermaster/http_transport.py), measured in this process, against one server.

    .venv/bin/python -m bench.http_clients            # 3,000 requests per client and concurrency
    .venv/bin/python -m bench.http_clients --quick    # 200, to check it runs

The server is a small ASGI app under uvicorn with its default settings, in a child process (as a
provider or Stripe is another machine), answering a JSON POST shaped like a provider's resource. For
each concurrency both clients send the same requests, httpx's first (the baseline), each after a warm
round; the figure is this process's CPU time per request (what the worker pays), and the ratio of the
aiohttp transport's to the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import httpx

from bench.stack import run_script, table
from quartermaster.http_transport import async_http_client
from tests.fixtures.servers import free_port

RESOURCE = {
    "resource_id": "res_0123456789abcdef",
    "service_id": "cloud/workers",
    "name": "bench",
    "status": "active",
    "configuration": {"region": "eu", "size": "small"},
    "charge": None,
    "created_at": "2026-12-07T00:00:00Z",
}


async def _app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = json.dumps(RESOURCE).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _serve(port: int) -> None:
    import uvicorn

    uvicorn.run(_app, host="127.0.0.1", port=port, log_level="warning")


async def _per_request(n: int, c: int, call: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    """(this process's CPU ms per request, requests per second) over `n` calls, `c` at once."""
    indices = iter(range(n))

    async def slot() -> None:
        for i in indices:
            await call(i)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(c)))
    return (time.process_time() - cpu0) / n * 1000, n / (time.perf_counter() - t0)


async def _until_serving(url: str, timeout: float = 120) -> None:
    """Wait for the child's server (a spawned interpreter importing uvicorn: slow on a busy machine)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as probe:
        while True:
            try:
                await probe.get(url)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start within {timeout:.0f} s") from None
                await asyncio.sleep(0.1)


async def measure(args: argparse.Namespace, out: TextIO) -> int:
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}/resources"
    try:
        await _until_serving(url)
        rows: list[list[object]] = []
        for c in args.c:
            figures: dict[str, tuple[float, float]] = {}
            clients = (("httpx's transport", httpx.AsyncClient), ("aiohttp transport", async_http_client))
            for name, make in clients:
                async with make(timeout=10) as client:

                    async def call(i: int, client: httpx.AsyncClient = client) -> None:
                        body = {"name": f"bench-{i}", "configuration": {"size": "s"}}
                        r = await client.post(url, json=body)
                        r.raise_for_status()
                        r.json()

                    await _per_request(max(args.n // 10, 20), c, call)  # warm: connections, caches
                    figures[name] = await _per_request(args.n, c, call)
            base, ours = figures["httpx's transport"], figures["aiohttp transport"]
            rows.append([c, f"{base[0]:.3f}", f"{ours[0]:.3f}", f"{ours[0] / base[0]:.2f}",
                         f"{base[1]:.0f}", f"{ours[1]:.0f}"])  # fmt: skip
        table(
            f"client CPU per request, {args.n} JSON POSTs per client and concurrency (this process)",
            ["c", "httpx's transport ms", "aiohttp transport ms", "ratio", "httpx req/s", "aiohttp req/s"],
            rows,
            out,
        )
        print("ratio = the aiohttp transport's CPU per request over httpx's own (lower is cheaper)", file=out)
    finally:
        server.terminate()
        server.join(timeout=10)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.http_clients", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=3000, help="requests per client and concurrency (default 3000)")
    p.add_argument("--c", type=int, nargs="+", default=[1, 20, 50], help="concurrencies (default 1 20 50)")
    p.add_argument("--quick", action="store_true", help="n=200, c=1 and 20")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.c = 200, [1, 20]
    return args


def main(argv: list[str] | None = None) -> int:
    return run_script(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
