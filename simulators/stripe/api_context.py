"""What one API request's handler sees: the store, the simulated clock, and the events it emits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulators.stripe.store import SimStore
from simulators.stripe.wire import new_id

API_VERSION = "2026-10-28.endive"


@dataclass
class ApiContext:
    store: SimStore
    base_url: str  # where the human's browser reaches this server (Checkout page links)
    idempotency_key: str | None = None
    emitted: list[str] = field(default_factory=list)

    def now(self) -> int:
        return self.store.now()

    def emit(self, type_: str, obj: dict[str, Any]) -> None:
        """Record a webhook event in the same transaction as the change it reports."""
        ident = new_id("evt_")
        event = {
            "id": ident,
            "object": "event",
            "api_version": API_VERSION,
            "created": self.now(),
            "data": {"object": public(obj)},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": self.idempotency_key},
            "type": type_,
        }
        self.store.add_event(event)
        self.emitted.append(ident)


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as Stripe shows it: the simulator's private `_` fields removed."""
    return {k: v for k, v in obj.items() if not k.startswith("_")}
