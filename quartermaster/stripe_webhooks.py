"""Receiving Stripe webhooks: signature verification and a dedup inbox.

`verify_event` checks the `Stripe-Signature` header with `stripe.Webhook.construct_event` (HMAC-SHA256
over `t.payload`, timestamps older than `tolerance` seconds refused). `WebhookInbox` records every
event id in `<data dir>/webhooks.sqlite` and calls `on_payment_method_ready(customer_id, metadata)` at
most once per (customer, Checkout setup), whichever of `setup_intent.succeeded` and
`checkout.session.completed` arrives first, however often either is delivered.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import stripe

PaymentMethodReady = Callable[[str, dict[str, str]], Awaitable[None]]
DEFAULT_TOLERANCE_SECONDS = 300

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, type TEXT NOT NULL, outcome TEXT NOT NULL,
                                   received_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ready (customer TEXT NOT NULL, setup_intent TEXT NOT NULL,
                                  event_id TEXT NOT NULL, fired_at INTEGER NOT NULL,
                                  PRIMARY KEY (customer, setup_intent));
"""


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
    """Verified, deduplicated webhook handling backed by SQLite (one process: the gateway)."""

    def __init__(self, *, path: Path, secret: str, tolerance: int = DEFAULT_TOLERANCE_SECONDS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._secret = secret
        self._tolerance = tolerance
        # serialises handling, so two deliveries for one setup cannot both pass the "fired?" check
        self._lock = asyncio.Lock()

    def close(self) -> None:
        self._db.close()

    def _record(self, event_id: str, kind: str, outcome: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?)", (event_id, kind, outcome, int(time.time()))
        )

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
            if self._db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone():
                return "duplicate"
            ready = _readiness(event)
            if ready is None:
                self._record(event_id, kind, "ignored")
                return "ignored"
            customer, setup_intent, metadata = ready
            fired = self._db.execute(
                "SELECT 1 FROM ready WHERE customer = ? AND setup_intent = ?", (customer, setup_intent)
            ).fetchone()
            if fired:
                self._record(event_id, kind, "already_handled")
                return "already_handled"
            await on_payment_method_ready(customer, metadata)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR IGNORE INTO ready VALUES (?, ?, ?, ?)",
                (customer, setup_intent, event_id, int(time.time())),
            )
            self._record(event_id, kind, "handled")
            self._db.execute("COMMIT")
            return "handled"
