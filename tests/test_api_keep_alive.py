"""The API's server keeps idle connections open longer than its clients do, so a client never reuses a
connection the server is closing (which answered ~1 in 500 agent requests with API_UNAVAILABLE)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from quartermaster.api.serving import KEEP_ALIVE_SECONDS, server_config
from tests.fixtures.servers import free_port

#: httpx's pool drops idle connections after this long (its default `keepalive_expiry`)
CLIENT_IDLE_EXPIRY = httpx.Limits().keepalive_expiry or 5.0


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@contextmanager
def _serving(config: uvicorn.Config) -> Iterator[int]:
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield config.port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _reused_after_idle(port: int, idle: float) -> bool:
    """Two requests on one connection, `idle` seconds apart: does the second get its answer?"""
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        if not sock.recv(4096).startswith(b"HTTP/1.1 200"):
            return False
        time.sleep(idle)
        try:
            sock.sendall(request)
            return sock.recv(4096).startswith(b"HTTP/1.1 200")
        except OSError:
            return False


def test_an_idle_connection_outlives_the_clients_expiry() -> None:
    assert KEEP_ALIVE_SECONDS > CLIENT_IDLE_EXPIRY
    idle = CLIENT_IDLE_EXPIRY + 0.5  # longer than a client keeps it; the server must still answer
    api = server_config(_ok, host="127.0.0.1", port=free_port())
    # the broken variant: uvicorn's default, which closes at the client's own expiry
    default = uvicorn.Config(_ok, host="127.0.0.1", port=free_port(), log_level="warning")
    with _serving(api) as api_port, _serving(default) as default_port, ThreadPoolExecutor(2) as pool:
        ours = pool.submit(_reused_after_idle, api_port, idle)
        broken = pool.submit(_reused_after_idle, default_port, idle)
        assert ours.result() is True
        assert broken.result() is False
