"""The Stripe adapter against the LIVE local Stripe server: customers, Checkout setup, payment tokens
with enforced limits, charges, Stripe's idempotency rules, and error classes."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import stripe

from models.money import Money
from models.secret import Secret
from providers.errors import PaymentDeclinedError, PermanentProviderError, RetryableProviderError
from providers.stripe_adapter import StripeAdapter
from tests.fixtures.stripe import SimAdmin, customer_with_card, issue


def key(step: str) -> str:
    return f"test-{step}-{uuid.uuid4().hex}"


async def test_customer_found_by_exact_email_or_created(
    stripe_adapter: StripeAdapter, stripe_admin: SimAdmin
):
    email = f"{uuid.uuid4().hex}@example.com"
    await stripe_admin.api("POST", "/v1/customers")  # noise: a customer without email
    first = await stripe_adapter.find_or_create_customer(
        email=email, principal_id="p1", idempotency_key=key("c")
    )
    assert first.created
    again = await stripe_adapter.find_or_create_customer(
        email=email.upper(), principal_id="p1", idempotency_key=key("c")
    )
    assert not again.created and again.customer_id == first.customer_id
    other = await stripe_adapter.find_or_create_customer(
        email="x" + email, principal_id="p2", idempotency_key=key("c")
    )
    assert other.created and other.customer_id != first.customer_id
    listed = (await stripe_admin.api("GET", "/v1/customers", email=email)).json()["data"]
    assert [c["id"] for c in listed] == [first.customer_id]
    assert listed[0]["metadata"] == {"qm_principal_id": "p1"}


async def test_setup_session_page_attaches_card(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    customer = await stripe_adapter.find_or_create_customer(
        email=f"{uuid.uuid4().hex}@example.com", principal_id="p", idempotency_key=key("c")
    )
    before = await stripe_adapter.payment_method_status(customer_id=customer.customer_id)
    assert not before.has_payment_method and before.payment_method_id is None
    session = await stripe_adapter.create_setup_session(
        customer_id=customer.customer_id,
        idempotency_key=key("s"),
        success_url="http://127.0.0.1:9/ok",
        cancel_url="http://127.0.0.1:9/no",
        metadata={"workflow_id": "provision-abc"},
    )
    assert session.url == f"{stripe_admin.base_url}/checkout/{session.session_id}"
    assert (await stripe_admin.complete_checkout(session.url)).status_code == 303
    after = await stripe_adapter.payment_method_status(customer_id=customer.customer_id)
    assert after.has_payment_method and after.payment_method_id and after.payment_method_id.startswith("pm_")
    state = (await stripe_admin.api("GET", f"/v1/checkout/sessions/{session.session_id}")).json()
    assert state["status"] == "complete" and state["metadata"] == {"workflow_id": "provision-abc"}
    intent = (await stripe_admin.api("GET", f"/v1/setup_intents/{state['setup_intent']}")).json()
    assert intent["status"] == "succeeded" and intent["payment_method"] == after.payment_method_id
    assert (await stripe_admin.http.get(session.url)).status_code == 410  # a completed session is closed
    assert (await stripe_admin.http.get("/checkout/cs_test_nope")).status_code == 404


async def test_charge_succeeds_and_uses_token(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await issue(stripe_adapter, customer_id, pm_id, 2500)
    k = key("charge")
    result = await stripe_adapter.charge(
        token_id=token, amount=Money(amount=1200), idempotency_key=k, metadata={}
    )
    assert result.status == "succeeded" and result.amount == Money(amount=1200)
    intent = (await stripe_admin.api("GET", f"/v1/payment_intents/{result.payment_intent_id}")).json()
    assert intent["metadata"]["qm_charge_key"] == k and intent["amount_received"] == 1200
    state = await stripe_adapter.get_payment_token(token_id=token)
    assert state.status == "active" and state.amount_captured == Money(amount=1200)


# --- Stripe's four idempotency behaviours ----------------------------------------------------------


async def test_idempotency_replays_success(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await issue(stripe_adapter, customer_id, pm_id, 5000)
    k = key("charge")
    first = await stripe_adapter.charge(
        token_id=token, amount=Money(amount=700), idempotency_key=k, metadata={}
    )
    second = await stripe_adapter.charge(
        token_id=token, amount=Money(amount=700), idempotency_key=k, metadata={}
    )
    assert second.payment_intent_id == first.payment_intent_id
    assert [c.payment_intent_id for c in await stripe_adapter.list_charges(idempotency_key=k)] == [
        first.payment_intent_id
    ]
    assert (await stripe_adapter.get_payment_token(token_id=token)).amount_captured == Money(amount=700)


async def test_idempotency_replays_error_with_header(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin, card="pm_card_chargeDeclined")
    token = await issue(stripe_adapter, customer_id, pm_id)
    k = key("charge")
    for _ in range(2):
        with pytest.raises(PaymentDeclinedError) as info:
            await stripe_adapter.charge(
                token_id=token, amount=Money(amount=500), idempotency_key=k, metadata={}
            )
        assert info.value.code == "payment_declined" and info.value.decline_code == "generic_decline"
    declined = await stripe_adapter.list_charges(idempotency_key=k)
    assert [c.status for c in declined] == ["requires_payment_method"]  # one attempt, replayed
    # on the wire: the replay is byte-identical and marked
    form = {
        "amount": "500",
        "currency": "usd",
        "payment_method_data[shared_payment_granted_token]": token.reveal(),
        "confirm": "true",
        "metadata[qm_charge_key]": k,
    }
    headers = {"Authorization": "Bearer sk_test_quartermaster_local", "Idempotency-Key": k}
    raw = await stripe_admin.http.post("/v1/payment_intents", data=form, headers=headers)
    assert raw.status_code == 402 and raw.headers["idempotent-replayed"] == "true"
    assert raw.json()["error"]["type"] == "card_error"


async def test_idempotency_conflict_on_other_params(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await issue(stripe_adapter, customer_id, pm_id)
    k = key("charge")
    await stripe_adapter.charge(token_id=token, amount=Money(amount=100), idempotency_key=k, metadata={})
    with pytest.raises(PermanentProviderError) as info:
        await stripe_adapter.charge(token_id=token, amount=Money(amount=200), idempotency_key=k, metadata={})
    assert info.value.code == "idempotency_error" and info.value.status == 400
    assert len(await stripe_adapter.list_charges(idempotency_key=k)) == 1
    assert (await stripe_adapter.get_payment_token(token_id=token)).amount_captured == Money(amount=100)


async def test_idempotency_distinct_keys_make_distinct_objects(
    stripe_adapter: StripeAdapter, stripe_admin: SimAdmin
):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await issue(stripe_adapter, customer_id, pm_id)
    a = await stripe_adapter.charge(
        token_id=token, amount=Money(amount=100), idempotency_key=key("a"), metadata={}
    )
    b = await stripe_adapter.charge(
        token_id=token, amount=Money(amount=100), idempotency_key=key("b"), metadata={}
    )
    assert a.payment_intent_id != b.payment_intent_id
    assert (await stripe_adapter.get_payment_token(token_id=token)).amount_captured == Money(amount=200)


# --- Shared Payment Token limits -------------------------------------------------------------------


async def test_token_refuses_amount_over_limit_then_is_consumed(
    stripe_adapter: StripeAdapter, stripe_admin: SimAdmin
):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await issue(stripe_adapter, customer_id, pm_id, 1000)
    with pytest.raises(PermanentProviderError) as info:
        await stripe_adapter.charge(
            token_id=token, amount=Money(amount=1001), idempotency_key=key("x"), metadata={}
        )
    assert info.value.code == "payment_token_limit_exceeded"
    assert token.reveal() not in str(info.value)
    await stripe_adapter.charge(
        token_id=token, amount=Money(amount=1000), idempotency_key=key("y"), metadata={}
    )
    state = await stripe_adapter.get_payment_token(token_id=token)
    assert (state.status, state.deactivated_reason) == ("deactivated", "consumed")
    with pytest.raises(PermanentProviderError) as again:
        await stripe_adapter.charge(
            token_id=token, amount=Money(amount=1), idempotency_key=key("z"), metadata={}
        )
    assert again.value.code == "payment_token_inactive"


async def test_token_expires(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await issue(stripe_adapter, customer_id, pm_id, expires_in=timedelta(minutes=5))
    await stripe_admin.advance_clock(301)
    with pytest.raises(PermanentProviderError) as info:
        await stripe_adapter.charge(
            token_id=token, amount=Money(amount=10), idempotency_key=key("x"), metadata={}
        )
    assert info.value.code == "payment_token_inactive"
    state = await stripe_adapter.get_payment_token(token_id=token)
    assert (state.status, state.deactivated_reason) == ("deactivated", "expired")


async def test_token_revoked(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await issue(stripe_adapter, customer_id, pm_id)
    k = key("revoke")
    revoked = await stripe_adapter.revoke_payment_token(token_id=token, idempotency_key=k)
    assert (revoked.status, revoked.deactivated_reason) == ("deactivated", "revoked")
    assert (
        await stripe_adapter.revoke_payment_token(token_id=token, idempotency_key=k)
    ).status == "deactivated"
    with pytest.raises(PermanentProviderError) as info:
        await stripe_adapter.charge(
            token_id=token, amount=Money(amount=10), idempotency_key=key("x"), metadata={}
        )
    assert info.value.code == "payment_token_inactive"
    assert await stripe_adapter.list_charges(idempotency_key=k) == []


async def test_token_takes_stripes_parameters_and_refuses_others(
    stripe_adapter: StripeAdapter, stripe_admin: SimAdmin
):
    """The issued-token create of Stripe's API: `shared_metadata`, `return_url`, `setup_future_usage`
    are taken and shown; `metadata` and `usage_limits[recurring_interval]`, which Stripe does not
    define there, are refused as Stripe refuses them, and nothing is created."""
    _, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    base = {
        "payment_method": pm_id, "usage_limits[currency]": "usd", "usage_limits[max_amount]": "900",
        "seller_details[external_id]": "cloud",
    }  # fmt: skip
    headers = {"Authorization": "Bearer sk_test_quartermaster_local"}
    created = await stripe_admin.http.post(
        "/v1/shared_payment/issued_tokens", headers=headers,
        data={**base, "shared_metadata[order]": "7", "return_url": "https://example.com/back",
              "setup_future_usage": "on_session"},
    )  # fmt: skip
    assert created.status_code == 200, created.text
    token = created.json()
    assert token["object"] == "shared_payment.issued_token" and token["shared_metadata"] == {"order": "7"}
    assert (token["return_url"], token["setup_future_usage"]) == ("https://example.com/back", "on_session")
    assert "metadata" not in token
    for extra, param in (
        ({"metadata[order]": "7"}, "metadata"),
        ({"usage_limits[recurring_interval]": "month"}, "usage_limits[recurring_interval]"),
    ):
        refused = await stripe_admin.http.post("/v1/shared_payment/issued_tokens", headers=headers,
                                               data={**base, **extra})  # fmt: skip
        assert refused.status_code == 400
        assert (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (
            "parameter_unknown",
            param,
        )


async def test_payment_intent_takes_the_granted_token_where_stripe_defines_it(
    stripe_adapter: StripeAdapter, stripe_admin: SimAdmin
):
    """`payment_method_data[shared_payment_granted_token]` confirms; the top-level
    `shared_payment_granted_token`, which Stripe does not define, is refused and charges nothing."""
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await issue(stripe_adapter, customer_id, pm_id, 800)
    headers = {"Authorization": "Bearer sk_test_quartermaster_local"}
    base = {"amount": "100", "currency": "usd", "confirm": "true"}
    old = await stripe_admin.http.post(
        "/v1/payment_intents", headers=headers, data={**base, "shared_payment_granted_token": token.reveal()}
    )
    assert old.status_code == 400 and old.json()["error"]["code"] == "parameter_unknown"
    assert (await stripe_adapter.get_payment_token(token_id=token)).amount_captured == Money(amount=0)
    new = await stripe_admin.http.post(
        "/v1/payment_intents", headers=headers,
        data={**base, "payment_method_data[shared_payment_granted_token]": token.reveal()},
    )  # fmt: skip
    assert new.status_code == 200 and new.json()["status"] == "succeeded"
    assert (new.json()["capture_method"], new.json()["confirmation_method"]) == ("automatic", "automatic")
    assert new.json()["client_secret"].startswith(new.json()["id"] + "_secret_")
    assert (await stripe_adapter.get_payment_token(token_id=token)).amount_captured == Money(amount=100)
    manual = await stripe_admin.http.post(
        "/v1/payment_intents", headers=headers,
        data={**base, "payment_method_data[shared_payment_granted_token]": token.reveal(),
              "capture_method": "manual"},
    )  # fmt: skip
    assert manual.status_code == 400 and manual.json()["error"]["param"] == "capture_method"
    unsimulated = await stripe_admin.http.post(
        "/v1/payment_intents", headers=headers,
        data={**base, "payment_method_data[shared_payment_granted_token]": token.reveal(),
              "on_behalf_of": "acct_1"},
    )  # fmt: skip
    assert unsimulated.json()["error"]["code"] == "parameter_not_simulated"
    assert (await stripe_adapter.get_payment_token(token_id=token)).amount_captured == Money(amount=100)


async def test_granted_token_is_the_sellers_view(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await issue(stripe_adapter, customer_id, pm_id, 800)
    await stripe_adapter.charge(
        token_id=token, amount=Money(amount=300), idempotency_key=key("g"), metadata={}
    )
    granted = (await stripe_admin.api("GET", f"/v1/shared_payment/granted_tokens/{token.reveal()}")).json()
    assert granted["object"] == "shared_payment.granted_token" and granted["id"] == token.reveal()
    assert granted["payment_method_details"]["type"] == "card"
    assert granted["payment_method_details"]["card"]["last4"] == "4242"
    assert granted["agent_details"] == {"network_business_profile": None}
    assert granted["usage_details"]["amount_captured"] == {"value": 300, "currency": "usd"}
    assert granted["shared_metadata"] == {"workflow_id": "provision-t"}
    assert "payment_method" not in granted and "seller_details" not in granted  # the issuer's, not shown


async def test_expand_replaces_ids_by_objects(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin):
    """`retrieve(pm, expand=["customer"])` through the real SDK returns the Customer, not its id."""
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    client = stripe.StripeClient(
        "sk_test_quartermaster_local", base_addresses={"api": stripe_admin.base_url},
        http_client=stripe.HTTPXClient(), max_network_retries=0,
    )  # fmt: skip
    pm = await client.v1.payment_methods.retrieve_async(pm_id, params={"expand": ["customer"]})
    assert isinstance(pm.customer, stripe.Customer) and pm.customer.id == customer_id
    listed = await client.v1.payment_methods.list_async(
        params={"customer": customer_id, "expand": ["data.customer"]}
    )
    assert listed.data[0].customer.id == customer_id
    token = await issue(stripe_adapter, customer_id, pm_id, 500)
    charged = await stripe_adapter.charge(token_id=token, amount=Money(amount=100), idempotency_key=key("e"),
                                          metadata={})  # fmt: skip
    intent = await client.v1.payment_intents.retrieve_async(
        charged.payment_intent_id, params={"expand": ["latest_charge", "payment_method.customer"]}
    )
    assert isinstance(intent.latest_charge, stripe.Charge) and intent.latest_charge.amount == 100
    assert intent.payment_method.customer.id == customer_id
    with pytest.raises(stripe.InvalidRequestError, match="cannot be expanded"):
        await client.v1.payment_intents.retrieve_async(
            charged.payment_intent_id, params={"expand": ["amount"]}
        )


async def test_token_refuses_other_currency_and_foreign_card(
    stripe_adapter: StripeAdapter, stripe_admin: SimAdmin
):
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    other_customer, _ = await customer_with_card(stripe_adapter, stripe_admin)
    with pytest.raises(PermanentProviderError) as foreign:
        await issue(stripe_adapter, other_customer, pm_id)
    assert foreign.value.code == "payment_method_mismatch"
    token = await issue(stripe_adapter, customer_id, pm_id)
    with pytest.raises(PermanentProviderError) as info:
        await stripe_adapter.charge(
            token_id=token, amount=Money(amount=10, currency="eur"), idempotency_key=key("x"), metadata={}
        )
    assert info.value.code == "currency_mismatch"


# --- error classes from the live server ------------------------------------------------------------


async def test_live_error_classes(stripe_adapter: StripeAdapter, stripe_admin: SimAdmin, stripe_sim: str):
    with pytest.raises(PermanentProviderError) as unknown:
        await stripe_adapter.payment_method_status(customer_id="cus_doesnotexist")
    assert unknown.value.code == "not_found" and unknown.value.status == 404
    await stripe_admin.fault("/v1/customers", "rate_limit", method="GET")
    with pytest.raises(RetryableProviderError) as limited:
        await stripe_adapter.find_or_create_customer(
            email="a@example.com", principal_id="p", idempotency_key=key("c")
        )
    assert limited.value.code == "rate_limited" and limited.value.status == 429
    await stripe_admin.fault("/v1/customers", "server_error", method="GET")
    with pytest.raises(RetryableProviderError) as down:
        await stripe_adapter.find_or_create_customer(
            email="a@example.com", principal_id="p", idempotency_key=key("c")
        )
    assert down.value.code == "stripe_unavailable" and down.value.status == 500
    with pytest.raises(PermanentProviderError) as missing:
        await stripe_adapter.get_payment_token(token_id=Secret("spt_doesnotexist"))
    assert missing.value.code == "not_found"
    wrong = StripeAdapter(api_key="sk_test_wrong", base_url=stripe_sim)
    try:
        with pytest.raises(PermanentProviderError) as auth:
            await wrong.payment_method_status(customer_id="cus_doesnotexist")
        assert auth.value.code == "authentication_failed"
    finally:
        await wrong.aclose()


# --- the server's own surface ----------------------------------------------------------------------


def test_admin_api_is_loopback_only(tmp_path):
    from starlette.testclient import TestClient

    from simulators.stripe import SimConfig, create_app

    client = TestClient(create_app(SimConfig(data_dir=tmp_path)))  # its peer is "testclient", not loopback
    assert client.post("/_sim/clock", json={"advance_seconds": 10}).status_code == 403
    assert client.get("/_sim/events").status_code == 403
    assert client.post("/_sim/faults", json={"path": "/v1/customers", "kind": "drop"}).status_code == 403


def test_dev_webhook_secret_file(tmp_path):
    import stat

    from simulators.stripe.__main__ import webhook_secret

    first = webhook_secret(tmp_path, {})
    assert first.startswith("whsec_") and webhook_secret(tmp_path, {}) == first
    assert stat.S_IMODE((tmp_path / "stripe-webhook-secret").stat().st_mode) == 0o600
    assert webhook_secret(tmp_path, {"STRIPE_WEBHOOK_SECRET": "whsec_env"}) == "whsec_env"


async def test_unknown_parameters_and_long_keys_are_refused(stripe_admin: SimAdmin):
    headers = {"Authorization": "Bearer sk_test_quartermaster_local"}
    r = await stripe_admin.http.post("/v1/customers", data={"emial": "a@example.com"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "emial"
    r = await stripe_admin.http.post(
        "/v1/customers", data={}, headers={**headers, "Idempotency-Key": "k" * 256}
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
