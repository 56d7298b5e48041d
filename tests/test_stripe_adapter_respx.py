"""The exact requests the Stripe adapter sends (paths, form fields, Idempotency-Key, Stripe-Version),
and how every stripe-python error class maps to the adapter's errors, against respx routes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import respx
import stripe

from models.money import Money
from models.secret import Secret
from providers.errors import (
    PaymentDeclinedError,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)
from providers.stripe_adapter import StripeAdapter

BASE = "http://stripe.test"
KEY = "sk_test_respx"
LEAK = "BODY-TEXT-THAT-MUST-NOT-LEAK"


@pytest.fixture
async def mocked() -> AsyncIterator[tuple[respx.Router, StripeAdapter]]:
    router = respx.Router(base_url=BASE, assert_all_called=False)
    # injected client: if injection failed, the SDK's own client would try to reach stripe.test and the
    # network guard would fail the test
    http = httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler))
    yield router, StripeAdapter(api_key=KEY, base_url=BASE, http_client=http)
    await http.aclose()


def form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


def common_headers(request: httpx.Request, idempotency_key: str | None) -> None:
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Stripe-Version"] == stripe.api_version
    assert request.headers.get("Idempotency-Key") == idempotency_key


def ok(body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json=body)


TOKEN = {
    "id": "spt_123", "object": "shared_payment.issued_token", "status": "active", "deactivated_reason": None,
    "usage_limits": {"currency": "usd", "max_amount": 5000, "expires_at": 4102444800},
    "usage_details": {"amount_captured": {"value": 1200, "currency": "usd"}},
}  # fmt: skip
INTENT = {"id": "pi_1", "object": "payment_intent", "status": "succeeded", "amount": 1500, "currency": "usd"}


async def test_find_or_create_customer_requests(mocked):
    router, adapter = mocked
    search = router.get("/v1/customers/search").respond(500)
    listing = router.get("/v1/customers").mock(
        return_value=ok({"object": "list", "data": [], "has_more": False})
    )
    create = router.post("/v1/customers").mock(return_value=ok({"id": "cus_1", "object": "customer"}))
    customer = await adapter.find_or_create_customer(
        email=" Ada@Example.com", principal_id="pr_1", idempotency_key="principal-pr_1:customer"
    )
    assert (customer.customer_id, customer.created) == ("cus_1", True)
    assert not search.called
    q = listing.calls.last.request.url.params
    assert (q["email"], q["limit"]) == ("ada@example.com", "100")
    common_headers(listing.calls.last.request, None)
    request = create.calls.last.request
    common_headers(request, "principal-pr_1:customer")
    assert form(request) == {"email": "ada@example.com", "metadata[qm_principal_id]": "pr_1"}


async def test_existing_customer_is_not_created_again(mocked):
    router, adapter = mocked
    theirs = {"id": "cus_old", "object": "customer", "metadata": {}}
    mine = {"id": "cus_mine", "object": "customer", "metadata": {"qm_principal_id": "pr_1"}}
    router.get("/v1/customers").mock(return_value=ok({"object": "list", "data": [mine, theirs]}))
    create = router.post("/v1/customers")
    found = await adapter.find_or_create_customer(
        email="a@example.com", principal_id="pr_1", idempotency_key="k"
    )
    assert (found.customer_id, found.created) == ("cus_mine", False) and not create.called
    other = await adapter.find_or_create_customer(
        email="a@example.com", principal_id="pr_2", idempotency_key="k"
    )
    assert other.customer_id == "cus_old"  # not ours: the oldest with that email


async def test_payment_method_status_requests(mocked):
    router, adapter = mocked
    expired = {
        "id": "pm_old",
        "object": "payment_method",
        "type": "card",
        "card": {"exp_month": 1, "exp_year": 2020},
    }
    good = {
        "id": "pm_ok",
        "object": "payment_method",
        "type": "card",
        "card": {"exp_month": 12, "exp_year": 2099},
    }
    route = router.get("/v1/payment_methods").mock(
        return_value=ok({"object": "list", "data": [expired, good]})
    )
    status = await adapter.payment_method_status(customer_id="cus_1")
    assert (status.has_payment_method, status.payment_method_id) == (True, "pm_ok")
    q = route.calls.last.request.url.params
    assert (q["customer"], q["type"], q["limit"]) == ("cus_1", "card", "100")
    route.mock(return_value=ok({"object": "list", "data": [expired]}))
    assert not (await adapter.payment_method_status(customer_id="cus_1")).has_payment_method


async def test_create_setup_session_requests(mocked):
    router, adapter = mocked
    route = router.post("/v1/checkout/sessions").mock(
        return_value=ok({"id": "cs_1", "object": "checkout.session", "url": "https://checkout.test/cs_1"})
    )
    session = await adapter.create_setup_session(
        customer_id="cus_1", idempotency_key="provision-r1:setup", success_url="https://qm/done",
        cancel_url="https://qm/cancel", metadata={"workflow_id": "provision-r1"},
    )  # fmt: skip
    assert (session.session_id, session.url) == ("cs_1", "https://checkout.test/cs_1")
    request = route.calls.last.request
    common_headers(request, "provision-r1:setup")
    assert form(request) == {
        "mode": "setup", "customer": "cus_1", "currency": "usd", "success_url": "https://qm/done",
        "cancel_url": "https://qm/cancel", "metadata[workflow_id]": "provision-r1",
        "setup_intent_data[metadata][workflow_id]": "provision-r1",
    }  # fmt: skip


async def test_issue_payment_token_requests(mocked):
    router, adapter = mocked
    pm = router.get("/v1/payment_methods/pm_1").mock(
        return_value=ok({"id": "pm_1", "object": "payment_method", "customer": "cus_1"})
    )
    route = router.post("/v1/shared_payment/issued_tokens").mock(return_value=ok(TOKEN))
    expires = datetime(2100, 1, 1, tzinfo=UTC)
    token = await adapter.issue_payment_token(
        customer_id="cus_1", payment_method_id="pm_1", seller="cloud", max_amount=Money(amount=5000),
        expires_at=expires, idempotency_key="provision-r1:spt",
        metadata={"workflow_id": "provision-r1"},
    )  # fmt: skip
    assert pm.called
    assert token.token_id.reveal() == "spt_123" and token.status == "active"
    assert token.max_amount == Money(amount=5000) and token.expires_at == expires
    assert token.amount_captured == Money(amount=1200) and "spt_123" not in repr(token)
    request = route.calls.last.request
    common_headers(request, "provision-r1:spt")
    assert form(request) == {
        "payment_method": "pm_1", "usage_limits[currency]": "usd", "usage_limits[max_amount]": "5000",
        "usage_limits[expires_at]": str(int(expires.timestamp())),
        "seller_details[external_id]": "cloud", "shared_metadata[workflow_id]": "provision-r1",
    }  # fmt: skip


async def test_issue_refuses_foreign_card_and_past_expiry_without_writing(mocked):
    router, adapter = mocked
    router.get("/v1/payment_methods/pm_1").mock(
        return_value=ok({"id": "pm_1", "object": "payment_method", "customer": "cus_other"})
    )
    route = router.post("/v1/shared_payment/issued_tokens")
    args: dict[str, Any] = dict(
        customer_id="cus_1", payment_method_id="pm_1", seller="cloud", max_amount=Money(amount=100),
        idempotency_key="k", metadata={},
    )  # fmt: skip
    with pytest.raises(PermanentProviderError) as foreign:
        await adapter.issue_payment_token(expires_at=datetime.now(UTC) + timedelta(hours=1), **args)
    assert foreign.value.code == "payment_method_mismatch"
    with pytest.raises(PermanentProviderError) as past:
        await adapter.issue_payment_token(expires_at=datetime.now(UTC) - timedelta(seconds=1), **args)
    assert past.value.code == "invalid_request"
    assert not route.called


async def test_revoke_and_get_token_requests(mocked):
    router, adapter = mocked
    revoked = {**TOKEN, "status": "deactivated", "deactivated_reason": "revoked"}
    revoke = router.post("/v1/shared_payment/issued_tokens/spt_123/revoke").mock(return_value=ok(revoked))
    get = router.get("/v1/shared_payment/issued_tokens/spt_123").mock(return_value=ok(TOKEN))
    token = await adapter.revoke_payment_token(
        token_id=Secret("spt_123"), idempotency_key="provision-r1:revoke"
    )
    assert (token.status, token.deactivated_reason) == ("deactivated", "revoked")
    common_headers(revoke.calls.last.request, "provision-r1:revoke")
    assert form(revoke.calls.last.request) == {}
    assert (await adapter.get_payment_token(token_id=Secret("spt_123"))).max_amount == Money(amount=5000)
    common_headers(get.calls.last.request, None)
    with pytest.raises(PermanentProviderError, match="malformed"):
        await adapter.get_payment_token(token_id=Secret("spt_1/../../v1/customers"))


async def test_charge_requests(mocked):
    router, adapter = mocked
    route = router.post("/v1/payment_intents").mock(return_value=ok(INTENT))
    result = await adapter.charge(
        token_id=Secret("spt_123"), amount=Money(amount=1500), idempotency_key="cloud-order-9:charge",
        metadata={"order": "9"},
    )  # fmt: skip
    assert (result.payment_intent_id, result.status, result.amount) == (
        "pi_1",
        "succeeded",
        Money(amount=1500),
    )
    request = route.calls.last.request
    common_headers(request, "cloud-order-9:charge")
    assert form(request) == {
        "amount": "1500", "currency": "usd", "payment_method_data[shared_payment_granted_token]": "spt_123",
        "confirm": "true",
        "metadata[order]": "9", "metadata[qm_charge_key]": "cloud-order-9:charge",
    }  # fmt: skip


async def test_charge_reconciles_after_connection_error(mocked):
    router, adapter = mocked
    post = router.post("/v1/payment_intents").mock(side_effect=httpx.RemoteProtocolError("peer closed"))
    search = router.get("/v1/payment_intents/search").mock(
        return_value=ok({"object": "search_result", "data": [INTENT], "has_more": False})
    )
    result = await adapter.charge(
        token_id=Secret("spt_123"), amount=Money(amount=1500), idempotency_key="k1", metadata={}
    )
    assert result.payment_intent_id == "pi_1"
    assert post.call_count == 1 and search.call_count == 1
    assert search.calls.last.request.url.params["query"] == "metadata['qm_charge_key']:'k1'"
    search.mock(return_value=ok({"object": "search_result", "data": [], "has_more": False}))
    with pytest.raises(RetryableProviderError) as info:
        await adapter.charge(
            token_id=Secret("spt_123"), amount=Money(amount=1500), idempotency_key="k1", metadata={}
        )
    assert info.value.code == "connection_error" and post.call_count == 2  # one attempt per call


def error(status: int, type_: str, code: str | None = None, **extra: Any) -> httpx.Response:
    body = {
        "error": {"type": type_, "message": f"{LEAK} spt_123", **({"code": code} if code else {}), **extra}
    }
    return httpx.Response(status, json=body, headers={"Retry-After": "2"} if status == 429 else {})


ERRORS = [
    (error(402, "card_error", "card_declined", decline_code="insufficient_funds"), PaymentDeclinedError,
     "payment_declined"),
    (error(400, "idempotency_error"), PermanentProviderError, "idempotency_error"),
    (error(429, "rate_limit_error", "rate_limit"), RetryableProviderError, "rate_limited"),
    (httpx.ConnectError("refused"), RetryableProviderError, "connection_error"),
    (error(400, "invalid_request_error", "parameter_invalid", param="amount"), PermanentProviderError,
     "invalid_request"),
    (error(404, "invalid_request_error", "resource_missing"), PermanentProviderError, "not_found"),
    (error(400, "invalid_request_error", "shared_payment_token_limit_exceeded"), PermanentProviderError,
     "payment_token_limit_exceeded"),
    (error(401, "invalid_request_error"), PermanentProviderError, "authentication_failed"),
    (error(403, "invalid_request_error"), PermanentProviderError, "permission_denied"),
    (error(500, "api_error"), RetryableProviderError, "stripe_unavailable"),
    (error(503, "api_error"), RetryableProviderError, "stripe_unavailable"),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "cls", "code"), ERRORS, ids=[e[2] + str(i) for i, e in enumerate(ERRORS)])
async def test_error_mapping_one_attempt(mocked, answer: Any, cls: type[ProviderError], code: str):
    router, adapter = mocked
    route = router.get("/v1/shared_payment/issued_tokens/spt_123")
    if isinstance(answer, Exception):
        route.mock(side_effect=answer)
    else:
        route.mock(return_value=answer)
    with pytest.raises(cls) as info:
        await adapter.get_payment_token(token_id=Secret("spt_123"))
    assert type(info.value) is cls and info.value.code == code
    assert route.call_count == 1  # the SDK never retries: Temporal owns retries
    assert LEAK not in str(info.value) and "spt_123" not in str(info.value)
    if code == "rate_limited":
        assert isinstance(info.value, RetryableProviderError) and info.value.retry_after == 2.0
    if code == "payment_declined":
        assert (
            isinstance(info.value, PaymentDeclinedError) and info.value.decline_code == "insufficient_funds"
        )


async def test_card_error_on_charge_is_attempted_once(mocked):
    router, adapter = mocked
    route = router.post("/v1/payment_intents").mock(return_value=error(402, "card_error", "card_declined"))
    search = router.get("/v1/payment_intents/search")
    with pytest.raises(PaymentDeclinedError):
        await adapter.charge(
            token_id=Secret("spt_123"), amount=Money(amount=10), idempotency_key="k", metadata={}
        )
    assert route.call_count == 1 and not search.called


async def test_every_write_carries_the_callers_key(mocked):
    router, adapter = mocked
    router.get("/v1/customers").mock(return_value=ok({"object": "list", "data": []}))
    router.post("/v1/customers").mock(return_value=ok({"id": "cus_1", "object": "customer"}))
    router.post("/v1/checkout/sessions").mock(
        return_value=ok({"id": "cs_1", "object": "checkout.session", "url": "u"})
    )
    router.get("/v1/payment_methods/pm_1").mock(return_value=ok({"id": "pm_1", "customer": "cus_1"}))
    router.post("/v1/shared_payment/issued_tokens").mock(return_value=ok(TOKEN))
    router.post("/v1/shared_payment/issued_tokens/spt_123/revoke").mock(return_value=ok(TOKEN))
    router.post("/v1/payment_intents").mock(return_value=ok(INTENT))
    await adapter.find_or_create_customer(email="a@example.com", principal_id="p", idempotency_key="key-1")
    await adapter.create_setup_session(
        customer_id="cus_1", idempotency_key="key-2", success_url="s", cancel_url="c", metadata={}
    )
    await adapter.issue_payment_token(
        customer_id="cus_1", payment_method_id="pm_1", seller="db", max_amount=Money(amount=1),
        expires_at=datetime.now(UTC) + timedelta(hours=1), idempotency_key="key-3",
        metadata={},
    )  # fmt: skip
    await adapter.revoke_payment_token(token_id=Secret("spt_123"), idempotency_key="key-4")
    await adapter.charge(
        token_id=Secret("spt_123"), amount=Money(amount=1), idempotency_key="key-5", metadata={}
    )
    posts = [c.request for c in router.calls if c.request.method == "POST"]
    assert [r.headers.get("Idempotency-Key") for r in posts] == ["key-1", "key-2", "key-3", "key-4", "key-5"]
