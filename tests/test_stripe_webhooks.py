"""Webhooks from the live local Stripe to a receiver using `WebhookInbox`: Stripe's signature scheme,
rejection of tampered / wrongly signed / stale deliveries, retries on failure, and exactly one
"payment method ready" callback despite duplicates and reordering."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from providers.store import open_store
from providers.stripe_adapter import StripeAdapter
from quartermaster.config import LOCAL_STRIPE_KEY
from quartermaster.stripe_webhooks import WebhookInbox, WebhookVerificationError, verify_event
from simulators.stripe import SimConfig, create_app
from simulators.stripe.webhooks import signature_header
from tests.fixtures.servers import serve_asgi
from tests.fixtures.stripe import SimAdmin

SECRET = "whsec_test_" + uuid.uuid4().hex
FLOW_EVENTS = {"checkout.session.completed", "setup_intent.succeeded", "payment_method.attached"}


class Receiver:
    """The gateway's webhook endpoint in miniature: raw deliveries are kept for the tests."""

    def __init__(self, inbox: WebhookInbox) -> None:
        self.inbox = inbox
        self.deliveries: list[tuple[bytes, str]] = []
        self.callbacks: list[tuple[str, dict[str, str]]] = []
        self.fail_next = 0

    async def ready(self, customer_id: str, metadata: dict[str, str]) -> None:
        self.callbacks.append((customer_id, metadata))

    async def endpoint(self, request: Request) -> Response:
        payload = await request.body()
        self.deliveries.append((payload, request.headers.get("stripe-signature", "")))
        if self.fail_next > 0:
            self.fail_next -= 1
            return PlainTextResponse("down", status_code=500)
        try:
            outcome = await self.inbox.handle(
                payload, request.headers.get("stripe-signature", ""), self.ready
            )
        except WebhookVerificationError:
            return PlainTextResponse("invalid", status_code=400)
        return PlainTextResponse(outcome)

    def for_customer(self, customer_id: str) -> list[tuple[bytes, str]]:
        return [
            d for d in self.deliveries if json.loads(d[0])["data"]["object"].get("customer") == customer_id
        ]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Receiver]]:
    base = tmp_path_factory.mktemp("stripe-webhooks")
    receiver = Receiver(
        WebhookInbox(store=open_store(base / "gateway" / "webhooks.sqlite").webhooks, secret=SECRET)
    )
    with serve_asgi(Starlette(routes=[Route("/stripe/webhook", receiver.endpoint, methods=["POST"])])) as gw:
        config = SimConfig(
            data_dir=base / "stripe",
            webhook_url=f"{gw}/stripe/webhook",
            webhook_secret=SECRET,
            webhook_retry_base_seconds=0.05,
        )
        with serve_asgi(create_app(config)) as sim:
            yield sim, receiver


async def until(check: Callable[[], Awaitable[bool] | bool], within: float = 10) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if (await result) if not isinstance(result, bool) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def checkout(sim: str, workflow_id: str) -> tuple[str, SimAdmin]:
    adapter = StripeAdapter(api_key=LOCAL_STRIPE_KEY, base_url=sim)
    admin = SimAdmin(sim)
    try:
        customer = await adapter.find_or_create_customer(
            email=f"{uuid.uuid4().hex}@example.com", principal_id="p", idempotency_key=uuid.uuid4().hex
        )
        session = await adapter.create_setup_session(
            customer_id=customer.customer_id,
            idempotency_key=uuid.uuid4().hex,
            success_url="http://127.0.0.1:9/d",
            cancel_url="http://127.0.0.1:9/c",
            metadata={"workflow_id": workflow_id},
        )
        assert (await admin.complete_checkout(session.url)).status_code == 303
    finally:
        await adapter.aclose()
    return customer.customer_id, admin


async def delivered(admin: SimAdmin, customer_id: str) -> list[dict[str, Any]]:
    events = [
        e
        for e in await admin.events()
        if json.loads(e["payload"])["data"]["object"].get("customer") == customer_id
    ]
    return events


async def test_checkout_sends_signed_events_and_one_callback(pair: tuple[str, Receiver]):
    sim, receiver = pair
    customer_id, admin = await checkout(sim, "provision-w1")

    async def all_delivered() -> bool:
        events = await delivered(admin, customer_id)
        return {e["type"] for e in events} == FLOW_EVENTS and all(e["delivered"] for e in events)

    await until(all_delivered)
    assert receiver.callbacks.count((customer_id, {"workflow_id": "provision-w1"})) == 1
    assert [c for c in receiver.callbacks if c[0] == customer_id] == [
        (customer_id, {"workflow_id": "provision-w1"})
    ]
    for payload, header in receiver.for_customer(customer_id):  # Stripe's scheme, checked by hand
        parts = dict(item.split("=", 1) for item in header.split(","))
        expected = hmac.new(SECRET.encode(), parts["t"].encode() + b"." + payload, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(parts["v1"], expected) and abs(int(parts["t"]) - time.time()) < 60
    await admin.aclose()


async def test_duplicates_and_reordering_call_back_once(pair: tuple[str, Receiver], tmp_path: Path):
    sim, receiver = pair
    customer_id, admin = await checkout(sim, "provision-w2")
    await until(lambda: len(receiver.for_customer(customer_id)) == 3)
    deliveries = receiver.for_customer(customer_id)
    # a fresh inbox gets every delivery twice, newest first (setup_intent before checkout.session)
    inbox = WebhookInbox(store=open_store(tmp_path / "webhooks.sqlite").webhooks, secret=SECRET)
    calls: list[tuple[str, dict[str, str]]] = []

    async def ready(customer: str, metadata: dict[str, str]) -> None:
        calls.append((customer, metadata))

    outcomes = [await inbox.handle(p, h, ready) for p, h in [*reversed(deliveries), *deliveries]]
    assert calls == [(customer_id, {"workflow_id": "provision-w2"})]
    assert outcomes.count("handled") == 1 and outcomes[3:] == ["duplicate"] * 3
    assert sorted(outcomes[:3]) == ["already_handled", "handled", "ignored"]
    # and the live path: the sim redelivers every event of this flow again
    for event in await delivered(admin, customer_id):
        assert (await admin.http.post(f"/_sim/events/{event['id']}/deliver")).json()["status"] == 200
    assert [c for c in receiver.callbacks if c[0] == customer_id] == [
        (customer_id, {"workflow_id": "provision-w2"})
    ]
    await admin.aclose()


async def test_bad_deliveries_are_rejected(pair: tuple[str, Receiver], tmp_path: Path):
    sim, receiver = pair
    customer_id, admin = await checkout(sim, "provision-w3")
    await until(lambda: len(receiver.for_customer(customer_id)) == 3)
    payload, header = receiver.for_customer(customer_id)[0]
    verify_event(payload, header, SECRET)  # the genuine one passes
    tampered = payload.replace(customer_id.encode(), b"cus_attacker")
    stale_header = signature_header(payload, SECRET, int(time.time()) - 301)
    inbox = WebhookInbox(store=open_store(tmp_path / "webhooks.sqlite").webhooks, secret=SECRET)
    calls: list[str] = []

    async def ready(customer: str, metadata: dict[str, str]) -> None:
        calls.append(customer)

    for bad_payload, bad_header, secret in [
        (tampered, header, SECRET),
        (payload, header, "whsec_wrong"),
        (payload, stale_header, SECRET),
        (payload, "", SECRET),
        (payload, "t=abc,v1=zz", SECRET),
    ]:
        with pytest.raises(WebhookVerificationError) as info:
            verify_event(bad_payload, bad_header, secret)
        assert info.value.code == "webhook_signature_invalid" and customer_id not in str(info.value)
        with pytest.raises(WebhookVerificationError):
            await WebhookInbox(store=open_store(tmp_path / "other.sqlite").webhooks, secret=secret).handle(
                bad_payload, bad_header, ready
            )
    # just inside the tolerance is accepted; nothing bad reached the callback
    fresh = signature_header(payload, SECRET, int(time.time()) - 290)
    assert await inbox.handle(payload, fresh, ready) in {"handled", "ignored"}
    assert set(calls) <= {customer_id}
    await admin.aclose()


async def test_failed_deliveries_are_retried(pair: tuple[str, Receiver]):
    sim, receiver = pair
    receiver.fail_next = 2
    customer_id, admin = await checkout(sim, "provision-w4")

    async def all_delivered() -> bool:
        events = await delivered(admin, customer_id)
        return len(events) == 3 and all(e["delivered"] for e in events)

    await until(all_delivered)
    events = await delivered(admin, customer_id)
    assert sum(e["attempts"] for e in events) == 5  # two 500s, then three successes
    assert [c for c in receiver.callbacks if c[0] == customer_id] == [
        (customer_id, {"workflow_id": "provision-w4"})
    ]
    await admin.aclose()


async def test_callback_failure_is_not_recorded(pair: tuple[str, Receiver], tmp_path: Path):
    sim, receiver = pair
    customer_id, admin = await checkout(sim, "provision-w5")
    await until(lambda: len(receiver.for_customer(customer_id)) == 3)
    completed = next(
        d
        for d in receiver.for_customer(customer_id)
        if json.loads(d[0])["type"] == "checkout.session.completed"
    )
    inbox = WebhookInbox(store=open_store(tmp_path / "webhooks.sqlite").webhooks, secret=SECRET)

    async def broken(customer: str, metadata: dict[str, str]) -> None:
        raise RuntimeError("temporal unavailable")

    calls: list[str] = []

    async def ready(customer: str, metadata: dict[str, str]) -> None:
        calls.append(customer)

    with pytest.raises(RuntimeError):
        await inbox.handle(*completed, broken)
    assert await inbox.handle(*completed, ready) == "handled"  # the redelivery does the work
    assert calls == [customer_id]
    await admin.aclose()
