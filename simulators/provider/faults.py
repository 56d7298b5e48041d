"""Fault injection for tests: an ASGI middleware that makes chosen routes slow, fail, refuse (a
permanent 409), rate-limit, hang or "crash after commit" (the write happens, the response is lost),
as set through `POST /_sim/faults`.

Faults are test knobs, so they live in memory, not in the SQLite file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FaultKind = Literal[
    "latency", "error_500", "error_409", "error_429", "timeout", "crash_after_commit", "delay_after_commit"
]
DEFAULT_SECONDS: dict[str, float] = {
    "latency": 0.5,
    "error_429": 1.0,
    "timeout": 30.0,
    "delay_after_commit": 5.0,
}


class FaultSpec(BaseModel):
    """One fault: `route` is a path (`/resources`) or a route name (`create_resource`)."""

    model_config = ConfigDict(extra="forbid")

    route: str = Field(min_length=1, max_length=200)
    kind: FaultKind
    count: int = Field(default=1, ge=1, le=1000)
    seconds: float | None = Field(default=None, ge=0, le=120)


@dataclass
class _Armed:
    spec: FaultSpec
    remaining: int


class FaultBook:
    """The armed faults; each hit uses one of its `count`."""

    def __init__(self) -> None:
        self._faults: list[_Armed] = []

    def add(self, spec: FaultSpec) -> None:
        self._faults.append(_Armed(spec, spec.count))

    def clear(self) -> None:
        self._faults.clear()

    def listing(self) -> list[dict[str, Any]]:
        return [{**f.spec.model_dump(), "remaining": f.remaining} for f in self._faults]

    def take(self, path: str, route_name: str | None) -> FaultSpec | None:
        """The first armed fault for this request, consuming one of its uses."""
        for armed in self._faults:
            if armed.spec.route in (path, route_name):
                armed.remaining -= 1
                if armed.remaining <= 0:
                    self._faults.remove(armed)
                return armed.spec
        return None


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class FaultMiddleware:
    """Applies the armed faults before (or, for crash_after_commit, after) the real handler."""

    def __init__(self, app: ASGIApp, *, book: FaultBook, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.book = book
        self.routes = routes

    def _route_name(self, scope: Scope) -> str | None:
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "name", None)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim/"):
            await self.app(scope, receive, send)
            return
        fault = self.book.take(scope["path"], self._route_name(scope))
        if fault is None:
            await self.app(scope, receive, send)
            return
        seconds = fault.seconds if fault.seconds is not None else DEFAULT_SECONDS.get(fault.kind, 0.0)
        if fault.kind == "latency":
            await asyncio.sleep(seconds)
            await self.app(scope, receive, send)
        elif fault.kind == "error_500":
            await _respond(send, 500, _error_body("simulated_fault", "injected server error"))
        elif fault.kind == "error_409":
            # a permanent refusal: the caller must not retry, and undoes what it did so far
            await _respond(send, 409, _error_body("simulated_refusal", "injected permanent refusal"))
        elif fault.kind == "error_429":
            retry = str(max(1, round(seconds)))
            await _respond(
                send,
                429,
                _error_body("rate_limited", "too many requests"),
                [(b"retry-after", retry.encode())],
            )
        elif fault.kind == "timeout":
            # hold the request longer than the caller waits, then fail without doing the work
            await asyncio.sleep(seconds)
            await _respond(send, 504, _error_body("simulated_timeout", "injected timeout"))
        elif fault.kind == "delay_after_commit":
            # the write commits at once; its response is held back (a caller killed meanwhile never sees it)
            held: list[Message] = []

            async def hold(message: Message) -> None:
                held.append(message)

            await self.app(scope, receive, hold)
            await asyncio.sleep(seconds)
            for message in held:
                await send(message)
        else:
            await self._crash_after_commit(scope, receive, send)

    async def _crash_after_commit(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def swallow(message: Message) -> None:
            return None

        await self.app(scope, receive, swallow)  # the write commits; its response goes nowhere
        # Headers promising a body, then nothing: the server closes the connection mid-response,
        # which the caller sees as a dropped connection with an unknown outcome.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1024")],
            }
        )


async def _respond(
    send: Send, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})
