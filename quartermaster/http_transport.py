"""httpx's client API on aiohttp's HTTP/1.1 connections: the transport of Quartermaster's own clients.

Every HTTP call Quartermaster makes (the provider adapters, the Stripe SDK, the agents' API client) is
written against `httpx.AsyncClient`. Its default transport (httpcore over anyio and h11, pure Python)
costs 1.8 to 4.2 ms of client CPU per request on the 2-vCPU benchmark machine, more as concurrency
grows; httpx's API on this transport, 0.8 to 1.0 ms (`python -m bench.http_clients`, docs/performance.md
"Round 3, session 14"). The provider and Stripe calls were the largest share of the worker's CPU that
the engine's floor does not have. `AiohttpTransport` keeps httpx above (requests, auth, redirects,
cookies, content decoding, exceptions, and `httpx.MockTransport`/respx in tests) and sends the bytes
with aiohttp below.

What the transport guarantees, so callers see httpx's behaviour:
- httpx's timeouts apply: connect, read (per socket read) and pool (waiting for a connection);
- aiohttp's errors become httpx's: `ConnectError`, `ConnectTimeout`, `ReadTimeout`, `ReadError`,
  `RemoteProtocolError`, so every `except httpx.TransportError` still holds;
- the body is handed to httpx undecoded (httpx decodes gzip as before), cookies stay httpx's, and
  redirects are httpx's to follow or not;
- a connection idle for `keepalive_seconds` (4 s, under uvicorn's default 5 s) is not reused, so a
  request never lands on a connection the server is closing (tests/test_api_keep_alive.py);
- an aiohttp session belongs to one event loop: the transport keeps one per loop, so a client used
  from `asyncio.run` in turn (the CLI, tests) works as httpx's did.

Responses are read whole before they are returned (every caller here reads JSON); a streaming caller
keeps httpx's own transport.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import aiohttp
import httpx

#: idle connections are dropped after this long: under uvicorn's default keep-alive (5 s)
KEEPALIVE_SECONDS = 4.0
#: connections per client, as httpx's default `max_connections`
MAX_CONNECTIONS = 100


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` sending each request over a pooled aiohttp session."""

    def __init__(
        self, *, max_connections: int = MAX_CONNECTIONS, keepalive_seconds: float = KEEPALIVE_SECONDS
    ) -> None:
        self._max_connections = max_connections
        self._keepalive = keepalive_seconds
        _TRANSPORTS.add(self)
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            self._forget_ended_loops()
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, keepalive_timeout=self._keepalive, enable_cleanup_closed=False
            )
            session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the cookies
                auto_decompress=False,  # httpx decodes the body
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                timeout=aiohttp.ClientTimeout(total=None),
            )
            self._sessions[loop] = session
        return session

    def _forget_ended_loops(self) -> None:
        """Drop the sessions of loops that have ended (a client used under several `asyncio.run`s,
        or a process-long client at exit): marked closed, so aiohttp does not report them unclosed;
        their sockets went with the loop."""
        # list(): a copy made at once, as another thread's loop may add its session meanwhile
        for loop in [loop for loop in list(self._sessions) if loop.is_closed()]:
            session = self._sessions.pop(loop, None)
            if session is not None:
                _drop_connections(session)

    def __del__(self) -> None:
        self._forget_ended_loops()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        body = await request.aread()
        headers = request.headers.multi_items()  # httpx's, Content-Length included: aiohttp adds none
        try:
            async with self._session().request(
                request.method,
                str(request.url),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
                compress=None,
            ) as resp:
                content = await resp.read()
                status, raw_headers, reason = resp.status, resp.raw_headers, resp.reason
        except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
            kind = httpx.ConnectTimeout if isinstance(exc, TimeoutError) else httpx.ConnectError
            raise kind(_message(exc), request=request) from exc
        except TimeoutError as exc:  # aiohttp's SocketTimeoutError is one
            raise httpx.ReadTimeout(_message(exc), request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError) as exc:
            raise httpx.RemoteProtocolError(_message(exc), request=request) from exc
        except aiohttp.ClientResponseError as exc:  # a malformed response line or headers
            raise httpx.RemoteProtocolError(_message(exc), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(_message(exc), request=request) from exc
        return httpx.Response(
            status_code=status,
            headers=list(raw_headers),
            content=content,
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        """Close this loop's session (another loop's session is closed by that loop, or with it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - httpx closes clients from a running loop
            return
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()


#: every transport of the process, for `close_pooled_connections`
_TRANSPORTS: weakref.WeakSet[AiohttpTransport] = weakref.WeakSet()


async def close_pooled_connections() -> None:
    """Close the running loop's pooled connections of every client on this transport.

    For a process's shutdown (the worker, the API, a test stack): the adapters that hold long-lived
    clients are built once and never closed one by one. Harmless at any time: a client used again opens
    new connections."""
    for transport in list(_TRANSPORTS):
        await transport.aclose()


def _drop_connections(session: aiohttp.ClientSession) -> None:
    """Mark a session of an ended loop closed. `BaseConnector._close` is the synchronous half of
    aiohttp's `close()`, which on a closed loop only marks the connector closed. A session whose client
    was dropped unclosed while its loop still runs is not helped here: aiohttp reports it, as it should."""
    connector = session.connector
    if connector is not None and not connector.closed:
        close = getattr(connector, "_close", None)  # private: checked, and skipped if it changes
        if callable(close):
            close()


def _message(exc: BaseException) -> str:
    """The error's class and aiohttp's text, unless that text quotes a URL (its query could hold a
    value a log must not see): then the class alone, and the caller's request says where it went."""
    if isinstance(exc, aiohttp.ClientResponseError):
        text = f"{exc.status} {exc.message}".strip()
    else:
        text = str(exc)
    if "://" in text or "?" in text:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def async_http_client(**kwargs: Any) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` on `AiohttpTransport` (the same arguments as httpx's, but `transport`)."""
    return httpx.AsyncClient(transport=AiohttpTransport(), **kwargs)
