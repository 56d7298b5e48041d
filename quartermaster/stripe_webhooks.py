"""Receiving Stripe webhooks: signature verification and a dedup inbox.

`verify_event` checks the `Stripe-Signature` header with `stripe.Webhook.construct_event` (HMAC-SHA256
over `t.payload`, timestamps older than `tolerance` seconds refused). `WebhookInbox` records every
event id in the store (`providers.store`, `WebhookEventStore`, shared by every replica) and calls
`on_payment_method_ready(customer_id, metadata)` once per (customer, Checkout setup), whichever of
`setup_intent.succeeded` and `checkout.session.completed` arrives first, however often either is
delivered. (Two replicas receiving the two events at the same instant may both call it: the callback
is a signal the workflow treats idempotently; the store still records one `ready`.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

import stripe

from providers.store.interfaces import WebhookEventStore

PaymentMethodReady = Callable[[str, dict[str, str]], Awaitable[None]]
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(Exception):
    """The payload is not a genuine, recent Stripe event. `code` is stable; the message never quotes
    the payload or the header."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def verify_event(
    payload: bytes, sig_header: str, secret: str, tolerance: int = DEFAULT_TOLERANCE_SECONDS
) -> stripe.Event:
    """The verified event; raises WebhookVerificationError for a tampered, wrongly signed, stale
    (older than `tolerance` seconds) or malformed delivery."""
    try:
        event = stripe.Webhook.construct_event(payload, sig_header, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise WebhookVerificationError(
            "webhook_signature_invalid", "signature or timestamp rejected"
        ) from exc
    except ValueError as exc:  # not UTF-8 or not JSON, though correctly signed
        raise WebhookVerificationError("webhook_payload_invalid", "payload is not a JSON event") from exc
    return cast(stripe.Event, event)


def _readiness(event: dict[str, Any]) -> tuple[str, str, dict[str, str]] | None:
    """(customer, setup intent id, metadata) when the event says a Checkout setup finished."""
    obj = (event.get("data") or {}).get("object") or {}
    kind = event.get("type")
    if kind == "checkout.session.completed":
        if obj.get("mode") != "setup" or obj.get("status") != "complete":
            return None
        setup_intent = obj.get("setup_intent")
        if isinstance(setup_intent, dict):  # expanded
            setup_intent = setup_intent.get("id")
        key = setup_intent or obj.get("id")
    elif kind == "setup_intent.succeeded":
        key = obj.get("id")
    else:
        return None
    customer = obj.get("customer")
    if not isinstance(customer, str) or not customer or not isinstance(key, str):
        return None
    metadata = {str(k): str(v) for k, v in (obj.get("metadata") or {}).items()}
    return customer, key, metadata


class WebhookInbox:
    """Verified, deduplicated webhook handling over the store's `WebhookEventStore`."""

    def __init__(
        self, *, store: WebhookEventStore, secret: str, tolerance: int = DEFAULT_TOLERANCE_SECONDS
    ) -> None:
        self._store = store
        self._secret = secret
        self._tolerance = tolerance
        # serialises handling in this process, so two deliveries for one setup cannot both pass the
        # "fired?" check here; across replicas `record_fired` keeps one `ready`
        self._lock = asyncio.Lock()

    async def handle(
        self, payload: bytes, sig_header: str, on_payment_method_ready: PaymentMethodReady
    ) -> str:
        """Verify and process one delivery. Returns `handled` (callback called), `duplicate` (event id
        seen before), `already_handled` (another event for the same setup called it) or `ignored`.
        Raises WebhookVerificationError for bad deliveries; if the callback raises, nothing is
        recorded, so Stripe's redelivery tries again."""
        verified = verify_event(payload, sig_header, self._secret, self._tolerance)
        event_id, kind = str(verified.id), str(verified.type)
        event: dict[str, Any] = json.loads(payload)
        async with self._lock:
            if await self._store.seen(event_id):
                return "duplicate"
            ready = _readiness(event)
            if ready is None:
                await self._store.record_event(event_id, kind, "ignored")
                return "ignored"
            customer, setup_intent, metadata = ready
            if await self._store.fired(customer, setup_intent):
                await self._store.record_event(event_id, kind, "already_handled")
                return "already_handled"
            await on_payment_method_ready(customer, metadata)
            won = await self._store.record_fired(customer, setup_intent, event_id, kind)
            return "handled" if won else "already_handled"
