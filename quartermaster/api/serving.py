"""How the API's HTTP server runs (`python -m quartermaster.api`, `qm serve`, `qm dev`).

Idle keep-alive connections are closed by the client, never by the server: uvicorn's default closes
them after 5 s, the same as httpx's pool expiry (node's undici keeps them 4 s), so a client reusing a
connection at that moment sent its request into a socket the server was closing, and got no answer
(`API_UNAVAILABLE` for about 1 in 500 agent requests at C=50 in `bench.throughput`). The server keeps
them longer than any client does (docs/decisions.md).

Requests are parsed by httptools (llhttp, in C), not h11 (pure Python, uvicorn's choice when httptools
is not installed): the same bytes and responses, less CPU per request for the API and the simulators
that share this configuration (docs/performance.md, round 3 session 15).
"""

from __future__ import annotations

from typing import Any

import uvicorn

#: longer than the idle expiry of the clients that call the API (httpx 5 s, undici 4 s), as nginx does
KEEP_ALIVE_SECONDS = 75


def server_config(app: Any, *, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_SECONDS,
        http="httptools",
    )  # fmt: skip


def serve(app: Any, *, host: str, port: int) -> None:
    """Serve `app` until interrupted."""
    uvicorn.Server(server_config(app, host=host, port=port)).run()
