"""The local Stripe and the adapter held to Stripe's own definitions: stripe-python's parameter
TypedDicts and resource classes (16.1.0b1, the beta, for Shared Payment Tokens and the PaymentIntent
create that confirms with one; 16.1.0 GA for the rest), read from the installed SDKs
(tests/stripe_contract/). What the adapter sends is recorded from real requests to the local server.

It fails on a parameter the adapter sends that Stripe does not define, on a parameter Stripe defines
that the local server refuses, and on a field an object lacks that the SDK declares; each check is
also run against a deliberately broken adapter or server and shown to catch it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import simulators.stripe.app as sim_app
from models.money import Money
from providers.errors import PaymentDeclinedError, PermanentProviderError
from providers.stripe_adapter import StripeAdapter
from quartermaster.config import LOCAL_STRIPE_KEY
from simulators.stripe.parameters import PARAMETERS_FILE, recognised
from tests.fixtures.stripe import SimAdmin, customer_with_card
from tests.stripe_contract import generate
from tests.stripe_contract.checks import (
    Exchange,
    Recorder,
    endpoint_of,
    field_violations,
    form_encode,
    instance,
    object_violations,
    parameter_violations,
    probe_path,
)
from tests.stripe_contract.routes import ENDPOINTS, Endpoint, key
from tests.stripe_contract.sdk import params_tree, resource_tree

AUTH = {"Authorization": f"Bearer {LOCAL_STRIPE_KEY}"}


def _key(step: str) -> str:
    return f"contract-{step}-{uuid.uuid4().hex}"


@pytest.fixture
async def recorded(stripe_sim: str) -> AsyncIterator[tuple[Recorder, StripeAdapter]]:
    recorder = Recorder()
    client = recorder.client()
    adapter = StripeAdapter(api_key=LOCAL_STRIPE_KEY, base_url=stripe_sim, http_client=client)
    yield recorder, adapter
    await client.aclose()


async def drive(adapter: StripeAdapter, admin: SimAdmin) -> None:
    """Every method of the adapter, on the paths a provisioning takes (and a lost response)."""
    email = f"{uuid.uuid4().hex}@example.com"
    customer = await adapter.find_or_create_customer(
        email=email, principal_id="p1", idempotency_key=_key("c")
    )
    await adapter.find_or_create_customer(email=email, principal_id="p1", idempotency_key=_key("c"))
    session = await adapter.create_setup_session(
        customer_id=customer.customer_id, idempotency_key=_key("s"), success_url="http://127.0.0.1:9/ok",
        cancel_url="http://127.0.0.1:9/no", metadata={"workflow_id": "provision-contract"},
    )  # fmt: skip
    assert (await admin.complete_checkout(session.url)).status_code == 303
    pm = await adapter.payment_method_status(customer_id=customer.customer_id)
    assert pm.payment_method_id is not None
    token = await adapter.issue_payment_token(
        customer_id=customer.customer_id, payment_method_id=pm.payment_method_id, seller="cloud",
        max_amount=Money(amount=5000), expires_at=datetime.now(UTC) + timedelta(hours=1),
        idempotency_key=_key("t"), metadata={"qm_workflow_id": "provision-contract"},
    )  # fmt: skip
    await adapter.get_payment_token(token_id=token.token_id)
    charged = await adapter.charge(
        token_id=token.token_id, amount=Money(amount=1200), idempotency_key=_key("ch"), metadata={"o": "1"}
    )
    await admin.fault("/v1/payment_intents", "drop_after_commit")
    await adapter.charge(
        token_id=token.token_id, amount=Money(amount=300), idempotency_key=_key("ch"), metadata={}
    )
    await adapter.refund(
        payment_intent_id=charged.payment_intent_id,
        idempotency_key=_key("r"),
        metadata={},
        amount=Money(amount=200),
    )
    await adapter.refund(payment_intent_id=charged.payment_intent_id, idempotency_key=_key("r"), metadata={})
    await adapter.refund(payment_intent_id=charged.payment_intent_id, idempotency_key=_key("r"), metadata={})
    await adapter.list_refunds(payment_intent_id=charged.payment_intent_id)
    await adapter.revoke_payment_token(token_id=token.token_id, idempotency_key=_key("v"))


def clean(violations: list[str]) -> None:
    assert not violations, "\n".join(violations)


def used(exchanges: list[Exchange]) -> set[str]:
    return {key(e.method, e.path) for x in exchanges if (e := endpoint_of(x.method, x.path))}


ADAPTER_ENDPOINTS = {
    "GET /v1/customers", "POST /v1/customers", "GET /v1/payment_methods", "POST /v1/checkout/sessions",
    "GET /v1/payment_methods/{id}", "POST /v1/shared_payment/issued_tokens",
    "GET /v1/shared_payment/issued_tokens/{id}", "POST /v1/shared_payment/issued_tokens/{id}/revoke",
    "POST /v1/payment_intents", "GET /v1/payment_intents/search", "POST /v1/refunds", "GET /v1/refunds",
}  # fmt: skip


# --- what the adapter sends and gets back ---------------------------------------------------------


async def test_adapter_sends_only_what_stripe_defines_and_gets_whole_objects(recorded, stripe_admin):
    recorder, adapter = recorded
    await drive(adapter, stripe_admin)
    assert used(recorder.exchanges) == ADAPTER_ENDPOINTS  # every endpoint the adapter uses was exercised
    clean(parameter_violations(recorder.exchanges))
    clean(object_violations(recorder.exchanges))
    sent = [x for x in recorder.exchanges if x.path == "/v1/shared_payment/issued_tokens"]
    assert sent[0].params["shared_metadata"] == {"qm_workflow_id": "provision-contract"}


class MetadataAgain(StripeAdapter):
    """Broken: issues Shared Payment Tokens with `metadata`, as the adapter once did."""

    async def _raw(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        if path == "/v1/shared_payment/issued_tokens":
            params["metadata"] = params.pop("shared_metadata")
        return await super()._raw(method, path, **params)


async def test_broken_adapter_sending_metadata_is_caught(stripe_sim, stripe_admin):
    recorder = Recorder()
    client = recorder.client()
    broken = MetadataAgain(api_key=LOCAL_STRIPE_KEY, base_url=stripe_sim, http_client=client)
    customer_id, pm_id = await customer_with_card(broken, stripe_admin)
    with pytest.raises(PermanentProviderError) as refused:  # the local server refuses it, as Stripe does
        await broken.issue_payment_token(
            customer_id=customer_id, payment_method_id=pm_id, seller="cloud", max_amount=Money(amount=100),
            expires_at=datetime.now(UTC) + timedelta(hours=1), idempotency_key=_key("t"), metadata={"a": "b"},
        )  # fmt: skip
    assert refused.value.code == "invalid_request" and "parameter_unknown" in str(refused.value)
    await client.aclose()
    assert parameter_violations(recorder.exchanges) == [
        "POST /v1/shared_payment/issued_tokens: sends metadata, which Stripe does not define"
    ]


async def test_broken_server_dropping_a_field_is_caught(recorded, stripe_admin, monkeypatch):
    """Broken: the server answers PaymentIntents without `client_secret` (on the wire only, so the
    objects stored for later tests stay whole)."""
    recorder, adapter = recorded
    strip = sim_app._strip_private

    def without_client_secret(value: Any) -> Any:
        shown = strip(value)
        if isinstance(shown, dict) and shown.get("object") == "payment_intent":
            shown.pop("client_secret")
        return shown

    customer_id, pm_id = await customer_with_card(adapter, stripe_admin)
    token = await adapter.issue_payment_token(
        customer_id=customer_id, payment_method_id=pm_id, seller="cloud", max_amount=Money(amount=100),
        expires_at=datetime.now(UTC) + timedelta(hours=1), idempotency_key=_key("t"), metadata={},
    )  # fmt: skip
    clean(object_violations(recorder.exchanges))
    monkeypatch.setattr(sim_app, "_strip_private", without_client_secret)
    await adapter.charge(
        token_id=token.token_id, amount=Money(amount=100), idempotency_key=_key("c"), metadata={}
    )
    assert object_violations(recorder.exchanges) == [
        "POST /v1/payment_intents: payment_intent.client_secret: missing"
    ]


# --- what the server recognises ---------------------------------------------------------------------


def test_server_recognises_exactly_the_parameters_stripe_defines():
    """parameters.json, the server's gate, is what the pinned SDKs define, no more and no less
    (regenerate with `.venv/bin/python -m tests.stripe_contract.generate`)."""
    committed = json.loads(PARAMETERS_FILE.read_text())
    assert committed == generate.recognised(), "parameters.json drifted from stripe-python: regenerate it"
    assert {key(e.method, e.path) for e in ENDPOINTS} == {key(r.method, r.template) for r in sim_app.ROUTES}


async def refused_parameters(http: httpx.AsyncClient, endpoint: Endpoint) -> str | None:
    """Send every parameter Stripe defines on the endpoint, at every depth; the param the server
    refuses as unknown, if any (the values are junk: any other refusal is fine)."""
    pairs = form_encode(instance(params_tree(endpoint.sdk, endpoint.params)))
    path = probe_path(endpoint)
    if endpoint.method == "GET":
        response = await http.get(path, params=pairs, headers=AUTH)
    else:
        response = await http.post(path, data=dict(pairs), headers={**AUTH, "Idempotency-Key": _key("probe")})
    error = response.json().get("error") or {}
    return str(error.get("param")) if error.get("code") == "parameter_unknown" else None


async def test_server_refuses_no_parameter_stripe_defines(stripe_admin):
    for endpoint in ENDPOINTS:
        assert await refused_parameters(stripe_admin.http, endpoint) is None, key(
            endpoint.method, endpoint.path
        )
        # ... and still refuses what Stripe does not define, at the top and nested
        bogus = await stripe_admin.http.post(
            probe_path(endpoint), data={"qm_not_stripe": "1"}, headers=AUTH
        ) if endpoint.method == "POST" else await stripe_admin.http.get(
            probe_path(endpoint), params={"qm_not_stripe": "1"}, headers=AUTH
        )  # fmt: skip
        assert bogus.json()["error"]["code"] == "parameter_unknown", key(endpoint.method, endpoint.path)


async def test_broken_server_refusing_a_stripe_parameter_is_caught(stripe_admin, monkeypatch):
    real = recognised

    def without_return_url(method: str, path: str) -> dict[str, Any]:
        tree = dict(real(method, path))
        tree.pop("return_url", None)
        return tree

    monkeypatch.setattr(sim_app, "recognised", without_return_url)
    create = next(e for e in ENDPOINTS if e.path == "/v1/shared_payment/issued_tokens")
    assert await refused_parameters(stripe_admin.http, create) == "return_url"


async def declined_intent(adapter: StripeAdapter, admin: SimAdmin) -> str:
    customer_id, pm_id = await customer_with_card(adapter, admin, card="pm_card_chargeDeclined")
    token = await adapter.issue_payment_token(
        customer_id=customer_id, payment_method_id=pm_id, seller="cloud", max_amount=Money(amount=900),
        expires_at=datetime.now(UTC) + timedelta(hours=1), idempotency_key=_key("t"), metadata={},
    )  # fmt: skip
    k = _key("declined")
    with pytest.raises(PaymentDeclinedError):
        await adapter.charge(
            token_id=token.token_id, amount=Money(amount=100), idempotency_key=k, metadata={}
        )
    return (await adapter.list_charges(idempotency_key=k))[0].payment_intent_id


async def test_webhook_objects_are_whole(stripe_adapter, stripe_admin):
    """The objects inside the events the local Stripe sends (the envelope's optional fields, such as
    `account`, Stripe itself omits outside Connect, so only `data.object` is held to the SDK)."""
    await customer_with_card(stripe_adapter, stripe_admin)
    await stripe_adapter.refund(
        payment_intent_id=await charged_intent(stripe_adapter, stripe_admin), idempotency_key=_key("r"),
        metadata={},
    )  # fmt: skip
    by_object = {resource_tree(e.resource)["object"]: e.resource for e in ENDPOINTS}
    events = [json.loads(e["payload"]) for e in await stripe_admin.events()]
    kinds = {e["type"] for e in events}
    assert {"payment_method.attached", "setup_intent.succeeded", "checkout.session.completed",
            "charge.refunded"} <= kinds  # fmt: skip
    problems = []
    for event in events:
        obj = event["data"]["object"]
        problems += [f"{event['type']}: {p}" for p in field_violations(obj, by_object[obj["object"]])]
    clean(problems)


async def charged_intent(adapter: StripeAdapter, admin: SimAdmin) -> str:
    customer_id, pm_id = await customer_with_card(adapter, admin)
    token = await adapter.issue_payment_token(
        customer_id=customer_id, payment_method_id=pm_id, seller="cloud", max_amount=Money(amount=900),
        expires_at=datetime.now(UTC) + timedelta(hours=1), idempotency_key=_key("t"), metadata={},
    )  # fmt: skip
    charged = await adapter.charge(
        token_id=token.token_id, amount=Money(amount=100), idempotency_key=_key("c"), metadata={}
    )
    return charged.payment_intent_id


# --- objects of the endpoints only providers and tests call -----------------------------------------


async def test_every_endpoint_returns_whole_objects(stripe_adapter, stripe_admin):
    """The endpoints beyond the adapter's (the seller's granted-token view, retrieves, lists), each
    answered with the objects the SDK declares."""
    customer_id, pm_id = await customer_with_card(stripe_adapter, stripe_admin)
    token = await stripe_adapter.issue_payment_token(
        customer_id=customer_id, payment_method_id=pm_id, seller="cloud", max_amount=Money(amount=900),
        expires_at=datetime.now(UTC) + timedelta(hours=1), idempotency_key=_key("t"), metadata={"k": "v"},
    )  # fmt: skip
    charged = await stripe_adapter.charge(
        token_id=token.token_id, amount=Money(amount=400), idempotency_key=_key("c"), metadata={}
    )
    refund = await stripe_adapter.refund(
        payment_intent_id=charged.payment_intent_id, idempotency_key=_key("r"), metadata={}
    )
    recorder = Recorder()
    async with httpx.AsyncClient(
        base_url=stripe_admin.base_url, headers=AUTH, event_hooks={"response": [recorder.on_response]}
    ) as http:
        session = (await http.post("/v1/checkout/sessions", data={
            "mode": "setup", "customer": customer_id, "currency": "usd", "success_url": "http://127.0.0.1:9/"
        })).json()  # fmt: skip
        for path in (
            f"/v1/customers/{customer_id}", f"/v1/customers/{customer_id}/payment_methods",
            f"/v1/checkout/sessions/{session['id']}", f"/v1/setup_intents/{session['setup_intent']}",
            f"/v1/shared_payment/granted_tokens/{token.token_id.reveal()}",
            f"/v1/payment_intents/{charged.payment_intent_id}", "/v1/payment_intents",
            f"/v1/charges?payment_intent={charged.payment_intent_id}", f"/v1/refunds/{refund.refund_id}",
        ):  # fmt: skip
            assert (await http.get(path)).status_code == 200, path
        attach = await http.post("/v1/payment_methods/pm_card_visa/attach", data={"customer": customer_id})
        assert attach.status_code == 200
        declined = await http.get(
            f"/v1/payment_intents/{await declined_intent(stripe_adapter, stripe_admin)}"
        )
        assert declined.json()["last_payment_error"]["code"] == "card_declined"  # its nested objects checked
    clean(object_violations(recorder.exchanges))
    checked = used(recorder.exchanges) | ADAPTER_ENDPOINTS
    assert checked == {key(e.method, e.path) for e in ENDPOINTS}  # every endpoint's objects were checked
