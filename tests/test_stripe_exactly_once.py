"""Exactly one charge when the caller loses the response after Stripe committed it.

The local Stripe's `drop_after_commit` fault executes and commits the PaymentIntent, then closes the
connection before answering: the caller cannot know the outcome (stripe-python raises
APIConnectionError). A retry with the same deterministic idempotency key, or the adapter's own
reconciliation by metadata, must find the one PaymentIntent instead of charging again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import stripe

from models.money import Money
from models.secret import Secret
from providers.errors import PaymentDeclinedError
from providers.stripe_adapter import StripeAdapter
from quartermaster.config import LOCAL_STRIPE_KEY
from tests.fixtures.stripe import SimAdmin, customer_with_card, issue

PI_PATH = "/v1/payment_intents"


async def provider_state(admin: SimAdmin, charge_key: str, token: Secret) -> tuple[int, int, int]:
    """What Stripe holds for this purchase: PaymentIntents, Charge objects, amount captured on the token."""
    found = await admin.api(
        "GET", "/v1/payment_intents/search", query=f"metadata['qm_charge_key']:'{charge_key}'"
    )
    intents = found.json()["data"]
    charges = 0
    for intent in intents:
        charges += len((await admin.api("GET", "/v1/charges", payment_intent=intent["id"])).json()["data"])
    spt = (await admin.api("GET", f"/v1/shared_payment/issued_tokens/{token.reveal()}")).json()
    return len(intents), charges, spt["usage_details"]["amount_captured"]["value"]


def raw_client(base_url: str) -> stripe.StripeClient:
    """The bare SDK, as a caller that dies on the first error would use it (no retries)."""
    return stripe.StripeClient(
        LOCAL_STRIPE_KEY,
        http_client=stripe.HTTPXClient(),
        base_addresses={"api": base_url},
        max_network_retries=0,
    )


def charge_params(token: Secret, amount: int, key: str) -> dict[str, object]:
    return {
        "amount": amount,
        "currency": "usd",
        "payment_method_data": {"shared_payment_granted_token": token.reveal()},
        "confirm": True,
        "metadata": {"qm_charge_key": key},
        "idempotency_key": key,
    }


@pytest.fixture
async def token(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin) -> Secret:
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    return await issue(stripe_adapter, customer_id, pm_id, 10_000)


async def test_caller_dies_after_commit_retry_finds_one_charge(
    stripe_adapter: StripeAdapter, stripe_admin: SimAdmin, stripe_sim: str, token: Secret
):
    key = f"provision-{uuid.uuid4().hex}:charge"
    await stripe_admin.fault(PI_PATH, "drop_after_commit")
    with pytest.raises(stripe.APIConnectionError):  # the caller never learns the outcome
        await raw_client(stripe_sim).raw_request_async("post", PI_PATH, **charge_params(token, 1500, key))
    assert await provider_state(stripe_admin, key, token) == (1, 1, 1500)  # committed nonetheless

    # the retried activity: same business id, same step, same key
    retried = await stripe_adapter.charge(
        token_id=token, amount=Money(amount=1500), idempotency_key=key, metadata={}
    )
    assert retried.status == "succeeded"
    assert await provider_state(stripe_admin, key, token) == (1, 1, 1500)


async def test_adapter_reconciles_lost_response_by_metadata(
    stripe_adapter: StripeAdapter, stripe_admin: SimAdmin, token: Secret
):
    key = f"provision-{uuid.uuid4().hex}:charge"
    await stripe_admin.fault(PI_PATH, "drop_after_commit")
    result = await stripe_adapter.charge(
        token_id=token, amount=Money(amount=900), idempotency_key=key, metadata={}
    )
    assert result.status == "succeeded" and result.amount == Money(amount=900)
    assert await provider_state(stripe_admin, key, token) == (1, 1, 900)


async def test_lost_decline_is_reconciled_as_decline(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin, card="pm_card_chargeDeclined")
    token = await issue(stripe_adapter, customer_id, pm_id)
    key = f"provision-{uuid.uuid4().hex}:charge"
    await stripe_admin.fault(PI_PATH, "drop_after_commit")
    with pytest.raises(PaymentDeclinedError):
        await stripe_adapter.charge(
            token_id=token, amount=Money(amount=300), idempotency_key=key, metadata={}
        )
    assert await provider_state(stripe_admin, key, token) == (1, 1, 0)


async def test_rate_limited_then_retried_charges_once(
    stripe_adapter: StripeAdapter, stripe_admin: SimAdmin, token: Secret
):
    key = f"provision-{uuid.uuid4().hex}:charge"
    await stripe_admin.fault(PI_PATH, "rate_limit")
    with pytest.raises(Exception, match="rate_limited"):
        await stripe_adapter.charge(
            token_id=token, amount=Money(amount=250), idempotency_key=key, metadata={}
        )
    assert await provider_state(stripe_admin, key, token) == (0, 0, 0)
    await stripe_adapter.charge(token_id=token, amount=Money(amount=250), idempotency_key=key, metadata={})
    assert await provider_state(stripe_admin, key, token) == (1, 1, 250)


async def test_broken_variant_random_keys_double_charge(
    stripe_admin: SimAdmin, stripe_sim: str, token: Secret
):
    """The harness catches the bug it exists for: retrying with a fresh key (stripe-python's default
    when no key is given) after a lost response charges twice."""
    key = f"provision-{uuid.uuid4().hex}:charge"
    client = raw_client(stripe_sim)
    await stripe_admin.fault(PI_PATH, "drop_after_commit")
    with pytest.raises(stripe.APIConnectionError):
        await client.raw_request_async("post", PI_PATH, **charge_params(token, 400, key))
    retry = charge_params(token, 400, key)
    del retry["idempotency_key"]  # the SDK generates a random one
    await client.raw_request_async("post", PI_PATH, **retry)
    assert await provider_state(stripe_admin, key, token) == (2, 2, 800)


async def test_dropped_response_is_a_closed_connection(
    stripe_admin: SimAdmin, stripe_sim: str, token: Secret
):
    """The fault is what it claims: headers then a closed connection, no usable body."""
    key = f"provision-{uuid.uuid4().hex}:charge"
    await stripe_admin.fault(PI_PATH, "drop_after_commit")
    form = {
        "amount": "100",
        "currency": "usd",
        "payment_method_data[shared_payment_granted_token]": token.reveal(),
        "confirm": "true",
    }
    headers = {"Authorization": f"Bearer {LOCAL_STRIPE_KEY}", "Idempotency-Key": key}
    with pytest.raises(httpx.RemoteProtocolError):
        await stripe_admin.http.post(PI_PATH, data=form, headers=headers)
    replay = await stripe_admin.http.post(PI_PATH, data=form, headers=headers)
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert datetime.fromtimestamp(replay.json()["created"], UTC) > datetime.now(UTC) - timedelta(minutes=5)
