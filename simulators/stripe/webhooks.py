"""Webhook delivery from the local Stripe: events signed the way Stripe signs them
(`Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">`), retried with backoff on failure."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time

import httpx

from simulators.stripe.store import SimStore

log = logging.getLogger("simulators.stripe.webhooks")


def signature_header(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Stripe's signature scheme v1; the timestamp is real time (receivers check it against theirs)."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class WebhookSender:
    """Delivers each event in its own task; a non-2xx answer or a network error is retried after
    `retry_base * 2**attempt` seconds, up to `max_attempts` deliveries."""

    def __init__(
        self, store: SimStore, *, url: str | None, secret: str, max_attempts: int = 8, retry_base: float = 1.0
    ) -> None:
        self.store, self.url, self.secret = store, url, secret
        self.max_attempts, self.retry_base = max_attempts, retry_base
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def schedule(self, event_ids: list[str]) -> None:
        if self.url is None:
            return
        for ident in event_ids:
            task = asyncio.get_running_loop().create_task(self._deliver_with_retries(ident))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def deliver_once(self, ident: str) -> int | None:
        """One signed delivery attempt; returns the HTTP status, or None on a network error."""
        body = self.store.event_body(ident)
        if body is None or self.url is None:
            return None
        payload = body.encode()
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10)
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Stripe-Signature": signature_header(payload, self.secret),
                   "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}  # fmt: skip
        status: int | None
        try:
            response = await self._client.post(self.url, content=payload, headers=headers)
            status = response.status_code
        except httpx.HTTPError as exc:
            log.warning("webhook delivery of %s failed: %s", ident, type(exc).__name__)
            status = None
        self.store.record_delivery(ident, status, status is not None and 200 <= status < 300)
        return status

    async def _deliver_with_retries(self, ident: str) -> None:
        for attempt in range(self.max_attempts):
            status = await self.deliver_once(ident)
            if status is not None and 200 <= status < 300:
                return
            await asyncio.sleep(self.retry_base * 2**attempt)

    async def idle(self) -> None:
        """Wait until every scheduled delivery has finished (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
