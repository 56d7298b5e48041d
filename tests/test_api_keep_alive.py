"""The API's server keeps idle connections open longer than its clients do, so a client never reuses a
connection the server is closing (which answered ~1 in 500 agent requests with API_UNAVAILABLE)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import uvicorn

from quartermaster.api.serving import KEEP_ALIVE_SECONDS, server_config
from quartermaster.http_transport import KEEPALIVE_SECONDS
from tests.fixtures.servers import free_port, serve_config

#: the clients' pools drop idle connections after this long: httpx's default `keepalive_expiry`, and
#: the aiohttp transport under Quartermaster's own clients (quartermaster/http_transport.py)
CLIENT_IDLE_EXPIRY = max(httpx.Limits().keepalive_expiry or 5.0, KEEPALIVE_SECONDS)


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _response(sock: socket.socket) -> bytes:
    """One whole response (headers, then the 2-byte body), however the server split it; b"" if closed."""
    data = b""
    while not (b"\r\n\r\n" in data and data.endswith(b"ok")):
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    return data


def _reused_after_idle(port: int, idle: float) -> str:
    """Two requests on one connection, `idle` seconds apart: what the second one got back."""
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        first = _response(sock)
        if not first.startswith(b"HTTP/1.1 200"):
            return f"first: {first[:40]!r}"
        time.sleep(idle)
        try:
            sock.sendall(request)
            second = _response(sock)
        except OSError as exc:
            return f"second: {type(exc).__name__}"
        return "ok" if second.startswith(b"HTTP/1.1 200") else f"second: {second[:40]!r}"


def test_an_idle_connection_outlives_the_clients_expiry() -> None:
    assert KEEP_ALIVE_SECONDS > CLIENT_IDLE_EXPIRY
    idle = CLIENT_IDLE_EXPIRY + 0.5  # longer than a client keeps it; the server must still answer
    api = server_config(_ok, host="127.0.0.1", port=free_port())
    # the broken variant: uvicorn's default, which closes at the client's own expiry
    default = uvicorn.Config(_ok, host="127.0.0.1", port=free_port(), log_level="warning")
    with serve_config(api), serve_config(default), ThreadPoolExecutor(2) as pool:
        api_port, default_port = api.port, default.port
        ours = pool.submit(_reused_after_idle, api_port, idle)
        broken = pool.submit(_reused_after_idle, default_port, idle)
        assert ours.result() == "ok"
        assert broken.result() != "ok"


def test_the_api_parses_with_httptools_and_answers_the_same_bytes() -> None:
    """The server configuration the API and the simulators share parses requests with httptools (C),
    not h11 (Python, uvicorn's fallback); a raw pipelined request still gets both answers intact."""
    api = server_config(_ok, host="127.0.0.1", port=free_port())
    api.load()
    assert api.http_protocol_class.__module__ == "uvicorn.protocols.http.httptools_impl"
    fallback = uvicorn.Config(_ok, host="127.0.0.1", port=free_port(), log_level="warning", http="h11")
    fallback.load()  # the broken variant: what the API ran on before, and what the check must tell apart
    assert fallback.http_protocol_class.__module__ != "uvicorn.protocols.http.httptools_impl"
    with serve_config(api):
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
            sock.sendall(request * 2)
            data = b""
            while data.count(b"ok") < 2:
                chunk = sock.recv(4096)
                assert chunk, data
                data += chunk
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 2, data
