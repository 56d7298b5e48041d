"""Test-only admin API of the local Stripe, served to loopback clients only.

- `POST /_sim/faults` `{"path": "/v1/payment_intents", "method": "POST", "kind": K, "count": N}` makes the
  next N matching API requests fail: K = `rate_limit` (429, before executing), `server_error` (500,
  before executing) or `drop_after_commit` (the request executes and commits, then the connection is
  closed before a response is sent). `DELETE /_sim/faults` clears them.
- `POST /_sim/clock` `{"advance_seconds": S}` or `{"reset": true}`: shift the simulated clock (token
  expiry, recurring periods). Webhook signatures keep real time.
- `POST /_sim/customers/{customer}/card_outcome` `{"outcome": "declines" | "succeeds"}`: from now on
  every card attached to the customer declines (or succeeds again): a card that stops working between
  renewals.
- `GET /_sim/events`: the webhook event log with delivery state and exact payloads;
  `POST /_sim/events/{id}/deliver`: deliver one event again now (duplicate delivery).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulators.stripe.store import SimStore
from simulators.stripe.webhooks import WebhookSender

FAULT_KINDS = {
    "rate_limit": "rate_limit",
    "429": "rate_limit",
    "server_error": "server_error",
    "500": "server_error",
    "drop_after_commit": "drop_after_commit",
    "drop": "drop_after_commit",
}


@dataclass
class Fault:
    method: str
    path: str
    kind: str
    remaining: int


class Faults:
    """Pending injected faults, consumed in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, method: str, path: str, kind: str, count: int) -> None:
        self._faults.append(Fault(method.upper(), path, kind, count))

    def take(self, method: str, path: str) -> str | None:
        for fault in self._faults:
            if fault.method == method and fault.path == path and fault.remaining > 0:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault.kind
        return None

    def clear(self) -> None:
        self._faults.clear()


def is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _loopback_only(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    async def guarded(request: Request) -> Response:
        if not is_loopback(request):
            return JSONResponse(
                {"error": {"type": "invalid_request_error", "message": "admin API is loopback-only"}},
                status_code=403,
            )
        return await endpoint(request)

    return guarded


def admin_routes(store: SimStore, faults: Faults, sender: WebhookSender) -> list[Route]:
    async def add_fault(request: Request) -> Response:
        body: Any = await request.json()
        kind = FAULT_KINDS.get(str(body.get("kind")))
        path = body.get("path")
        count = body.get("count", 1)
        if kind is None or not isinstance(path, str) or not isinstance(count, int) or count < 1:
            return JSONResponse(
                {
                    "error": {
                        "type": "invalid_request_error",
                        "message": "need kind (rate_limit|server_error|drop_after_commit), "
                        "path and count >= 1",
                    }
                },
                status_code=400,
            )
        faults.add(str(body.get("method", "POST")), path, kind, count)
        return JSONResponse({"ok": True})

    async def clear_faults(request: Request) -> Response:
        faults.clear()
        return JSONResponse({"ok": True})

    async def clock(request: Request) -> Response:
        body: Any = await request.json()
        if body.get("reset"):
            store.clock_offset = 0
        elif isinstance(body.get("advance_seconds"), int):
            store.clock_offset += body["advance_seconds"]
        else:
            return JSONResponse(
                {"error": {"type": "invalid_request_error", "message": "need advance_seconds or reset"}},
                status_code=400,
            )
        return JSONResponse({"now": store.now(), "offset": store.clock_offset})

    async def card_outcome(request: Request) -> Response:
        body: Any = await request.json()
        outcome = body.get("outcome") if isinstance(body, dict) else None
        if outcome not in ("declines", "succeeds"):
            return JSONResponse(
                {"error": {"type": "invalid_request_error", "message": "outcome: declines | succeeds"}},
                status_code=400,
            )
        customer = request.path_params["customer"]
        cards = [pm for pm in store.find("payment_method") if pm.get("customer") == customer]
        for pm in cards:
            pm["_outcome"] = outcome
            store.put(pm)
        return JSONResponse({"customer": customer, "payment_methods": len(cards), "outcome": outcome})

    async def events(request: Request) -> Response:
        return JSONResponse({"data": store.events()})

    async def deliver(request: Request) -> Response:
        ident = request.path_params["event_id"]
        if store.event_body(ident) is None:
            return JSONResponse(
                {"error": {"type": "invalid_request_error", "message": "no such event"}}, status_code=404
            )
        return JSONResponse({"status": await sender.deliver_once(ident)})

    return [
        Route("/_sim/faults", _loopback_only(add_fault), methods=["POST"]),
        Route("/_sim/faults", _loopback_only(clear_faults), methods=["DELETE"]),
        Route("/_sim/clock", _loopback_only(clock), methods=["POST"]),
        Route("/_sim/customers/{customer}/card_outcome", _loopback_only(card_outcome), methods=["POST"]),
        Route("/_sim/events", _loopback_only(events), methods=["GET"]),
        Route("/_sim/events/{event_id}/deliver", _loopback_only(deliver), methods=["POST"]),
    ]
