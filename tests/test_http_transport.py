"""Quartermaster's HTTP clients send through aiohttp under httpx's API (quartermaster/http_transport.py):
what a server receives and what a caller gets back must be what httpx's own transport gives, over
real loopback HTTP, and every failure must still be one of httpx's exceptions.

Each property is checked against httpx's default transport as the reference, and the failure
mapping and the idle expiry also against a deliberately broken variant, to show the test catches it.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from quartermaster.http_transport import (
    KEEPALIVE_SECONDS,
    AiohttpTransport,
    async_http_client,
    close_pooled_connections,
)
from tests.fixtures.servers import free_port, serve_asgi, serve_config


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    """Echoes what arrived: method, path, query, raw headers, body, and the client's port."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(2)
    if path == "/gzip":
        data = gzip.compress(b'{"zipped": true}')
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})
        return
    seen = {
        "method": scope["method"],
        "path": path,
        "query": scope["query_string"].decode(),
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        "body": body.decode("latin-1"),
        "client_port": scope["client"][1],
    }
    headers = [
        (b"content-type", b"application/json"),
        (b"set-cookie", b"a=1; Path=/"),
        (b"set-cookie", b"b=2; Path=/"),
        (b"x-many", b"one"),
        (b"x-many", b"two"),
    ]
    status = 418 if path == "/teapot" else 200
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    with serve_asgi(_echo) as url:
        yield url


def _clients() -> list[tuple[str, httpx.AsyncClient]]:
    return [("httpx", httpx.AsyncClient(timeout=5)), ("aiohttp", async_http_client(timeout=5))]


def _seen_without_port(response: httpx.Response) -> dict[str, Any]:
    seen: dict[str, Any] = response.json()
    seen.pop("client_port")
    return seen


async def test_the_server_receives_the_same_request_and_the_caller_the_same_response(echo_url: str) -> None:
    results: dict[str, list[Any]] = {}
    for name, client in _clients():
        async with client:
            got = []
            post = await client.post(
                f"{echo_url}/v1/things?x=1&y=%C3%A9", json={"name": "ünï", "n": [1, 2]}, headers={"X-Id": "7"}
            )
            form = await client.post(f"{echo_url}/form", data={"a": "1", "b": "two words"})
            get = await client.get(f"{echo_url}/plain", params={"q": "a b"})
            empty = await client.post(f"{echo_url}/empty")
            teapot = await client.delete(f"{echo_url}/teapot")
            zipped = await client.get(f"{echo_url}/gzip")
            for r in (post, form, get, empty, teapot):
                seen = _seen_without_port(r)
                if r is teapot and name == "aiohttp":
                    # the one difference: aiohttp gives a bodiless DELETE `Content-Length: 0` (valid HTTP)
                    assert seen["headers"].pop() == ["content-length", "0"]
                repeated = (r.headers.get_list("set-cookie"), r.headers.get_list("x-many"))
                got.append((r.status_code, *repeated, seen))
            got.append((zipped.status_code, zipped.json(), zipped.headers.get("content-encoding")))
            got.append(sorted(client.cookies.items()))
            results[name] = got
    assert results["aiohttp"] == results["httpx"]
    # and what the server saw is the request itself: one Host, one exact Content-Length, the bytes
    status, _, _, seen = results["aiohttp"][0]
    names = [k for k, _ in seen["headers"]]
    assert status == 200
    assert names.count("host") == 1 and names.count("content-length") == 1
    assert dict(seen["headers"])["content-length"] == str(len(seen["body"].encode("latin-1")))
    assert json.loads(seen["body"].encode("latin-1")) == {"name": "ünï", "n": [1, 2]}


class _Unmapped(AiohttpTransport):
    """The broken variant: aiohttp's own exceptions reach the caller."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp

        async with aiohttp.ClientSession() as session, session.get(str(request.url)) as resp:
            return httpx.Response(resp.status, content=await resp.read(), request=request)


def _closing_server() -> tuple[int, threading.Event]:
    """A TCP server that reads a request and closes without answering."""
    port, stop = free_port(), threading.Event()
    sock = socket.create_server(("127.0.0.1", port))
    sock.settimeout(0.2)

    def run() -> None:
        with sock:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.recv(65536)

    threading.Thread(target=run, daemon=True).start()
    return port, stop


@pytest.mark.parametrize("variant", ["ours", "broken"])
async def test_every_failure_is_one_of_httpxs_exceptions(echo_url: str, variant: str) -> None:
    transport = AiohttpTransport() if variant == "ours" else _Unmapped()
    closing_port, stop = _closing_server()
    cases: list[tuple[str, str, type[Exception]]] = [
        ("refused", f"http://127.0.0.1:{free_port()}/?token=sekret", httpx.ConnectError),
        ("read timeout", f"{echo_url}/slow?token=sekret", httpx.ReadTimeout),
        ("closed without an answer", f"http://127.0.0.1:{closing_port}/?t=sekret", httpx.RemoteProtocolError),
    ]
    outcomes = {}
    try:
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, read=0.5)) as client:
            for name, url, expected in cases:
                try:
                    await client.get(url)
                    outcomes[name] = "answered"
                except expected as exc:
                    outcomes[name] = "mapped"
                    assert isinstance(exc, httpx.TransportError)
                    assert "sekret" not in str(exc)  # a message never quotes the request's query
                except Exception as exc:  # the broken variant's raw aiohttp errors
                    outcomes[name] = type(exc).__name__
    finally:
        stop.set()
    if variant == "ours":
        assert outcomes == {name: "mapped" for name, _, _ in cases}
    else:
        assert all(v != "mapped" for v in outcomes.values()), outcomes


@pytest.mark.parametrize("variant", ["ours", "broken"])
async def test_an_idle_connection_is_given_up_before_the_server_closes_it(variant: str) -> None:
    """Idle past KEEPALIVE_SECONDS (under uvicorn's 5 s), the next request opens a new connection; the
    broken variant (aiohttp's default 15 s) would send it on the one the server is about to close."""
    assert KEEPALIVE_SECONDS < uvicorn.Config(_echo).timeout_keep_alive
    keepalive = KEEPALIVE_SECONDS if variant == "ours" else 15.0
    # uvicorn with its default keep-alive (5 s): how the provider simulators and many servers run
    with serve_config(uvicorn.Config(_echo, host="127.0.0.1", port=free_port(), log_level="warning")) as url:
        async with httpx.AsyncClient(transport=AiohttpTransport(keepalive_seconds=keepalive)) as client:
            first = (await client.get(f"{url}/a")).json()["client_port"]
            again = (await client.get(f"{url}/b")).json()["client_port"]
            await asyncio.sleep(KEEPALIVE_SECONDS + 0.4)
            after_idle = (await client.get(f"{url}/c")).json()["client_port"]
    assert first == again  # pooled while in use
    if variant == "ours":
        assert after_idle != first
    else:
        assert after_idle == first


def test_one_client_serves_several_event_loops_and_closes_cleanly(echo_url: str) -> None:
    """The CLI and tests run a client under `asyncio.run` more than once: each loop gets its own
    connections, and nothing is reported unclosed when a loop ends with the client still open."""
    held = [async_http_client(timeout=5)]
    reported: list[dict[str, Any]] = []

    async def call() -> int:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        return (await held[0].get(f"{echo_url}/x")).status_code

    assert [asyncio.run(call()) for _ in range(3)] == [200, 200, 200]

    async def close() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        await held[0].get(f"{echo_url}/x")
        await close_pooled_connections()
        assert (await held[0].get(f"{echo_url}/y")).status_code == 200  # usable again after a close
        await held[0].aclose()

    asyncio.run(close())
    held.clear()
    gc.collect()  # the transport and every session it held: none may be reported unclosed
    assert [ctx.get("message") for ctx in reported] == []
