"""HttpProvider's billing calls against respx routes: the exact renew and plan-change requests (path,
body, idempotency key, account credential), and how a decline and a refused change map."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import respx

from models.secret import Secret
from providers.billing_contract import RenewableProvider
from providers.errors import PermanentProviderError
from providers.http_provider import HttpProvider

BASE = "http://db.provider.test"
ACCOUNT = Secret("acct_token_SECRET")
DUE = datetime(2027, 2, 28, 9, 0, tzinfo=UTC)


@pytest.fixture
async def provider() -> AsyncIterator[HttpProvider]:
    async with httpx.AsyncClient() as client:
        yield HttpProvider(name="db", base_url=BASE + "/", http_client=client, timeout=2.0)


@respx.mock
async def test_renew_sends_period_due_token_amount_and_key(provider: HttpProvider) -> None:
    assert isinstance(provider, RenewableProvider)
    route = respx.post(f"{BASE}/resources/res_1/renew").mock(
        return_value=httpx.Response(
            200, json={"amount": {"amount": 1800, "currency": "usd"}, "payment_reference": "pi_9"}
        )
    )
    charge = await provider.renew_resource(
        account=ACCOUNT,
        resource_id="res_1",
        period=3,
        due=DUE,
        payment_token=Secret("spt_abc"),
        idempotency_key="renewal-db-res_1:p3:charge-0",
        amount=1800,
    )
    assert (charge.amount.amount, charge.payment_reference) == (1800, "pi_9")
    sent = route.calls.last.request
    assert sent.headers["Idempotency-Key"] == "renewal-db-res_1:p3:charge-0"
    assert sent.headers["Authorization"] == "Bearer acct_token_SECRET"
    assert json.loads(sent.content) == {
        "period": 3,
        "due": DUE.isoformat(),
        "payment_token": "spt_abc",
        "amount": 1800,
    }


@respx.mock
async def test_a_declined_renewal_and_a_refused_change_are_permanent_with_their_codes(
    provider: HttpProvider,
) -> None:
    respx.post(f"{BASE}/resources/res_1/renew").mock(
        return_value=httpx.Response(402, json={"error": {"code": "payment_declined", "message": "no"}})
    )
    with pytest.raises(PermanentProviderError) as err:
        await provider.renew_resource(
            account=ACCOUNT,
            resource_id="res_1",
            period=1,
            due=DUE,
            payment_token=Secret("spt_abc"),
            idempotency_key="k",
        )
    assert err.value.code == "payment_declined"
    respx.post(f"{BASE}/resources/res_1/plan").mock(
        return_value=httpx.Response(409, json={"error": {"code": "constraint_violated", "message": "one"}})
    )
    with pytest.raises(PermanentProviderError) as err:
        await provider.change_plan(
            account=ACCOUNT,
            resource_id="res_1",
            service_id="db/postgres:team",
            amount=None,
            payment_token=None,
            idempotency_key="k2",
        )
    assert err.value.code == "constraint_violated"


@respx.mock
async def test_a_downgrade_sends_no_token_and_an_upgrade_sends_both(provider: HttpProvider) -> None:
    resource: dict[str, object] = {
        "resource_id": "res_1",
        "service_id": "db/postgres:team",
        "name": "d",
        "status": "complete",
        "configuration": {},
        "charge": None,
    }
    route = respx.post(f"{BASE}/resources/res_1/plan").mock(return_value=httpx.Response(200, json=resource))
    await provider.change_plan(
        account=ACCOUNT,
        resource_id="res_1",
        service_id="db/postgres:pro",
        amount=None,
        payment_token=None,
        idempotency_key="plan-1:plan",
    )
    assert json.loads(route.calls.last.request.content) == {"service_id": "db/postgres:pro"}
    await provider.change_plan(
        account=ACCOUNT,
        resource_id="res_1",
        service_id="db/postgres:team",
        amount=833,
        payment_token=Secret("spt_up"),
        idempotency_key="plan-2:plan",
    )
    assert json.loads(route.calls.last.request.content) == {
        "service_id": "db/postgres:team",
        "amount": 833,
        "payment_token": "spt_up",
    }
    assert route.calls.last.request.headers["Idempotency-Key"] == "plan-2:plan"
