"""Money after an undo: what Stripe kept equals what the ledger committed, for the principal and provider.

A reversible purchase undone after its charge is refunded (resource removed, nothing committed); an
irreversible one keeps its charge and commits its spend, and the result says so. A payment token whose
response is lost after Stripe committed it is issued once (the retry sends the same parameters).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from datetime import UTC, datetime
from typing import Any

import httpx
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError

from activities.spend import SpendActivities
from models.ledger import LedgerView, monthly_ledger_id
from models.provisioning import ProvisionResult
from quartermaster.config import LOCAL_STRIPE_KEY
from tests.fixtures.stack import Stack, new_email
from tests.test_provision_e2e import resources_named, result_of


async def stripe_kept(stack: Stack, provider: str, request_id: str) -> tuple[int, int]:
    """(charged, refunded) at Stripe for this request's charges at `provider`, in minor units."""
    key = f"{provider}:provision-{request_id}:create:charge"
    auth = {"Authorization": f"Bearer {LOCAL_STRIPE_KEY}"}
    async with httpx.AsyncClient(base_url=stack.stripe_url, headers=auth) as http:
        r = await http.get(
            "/v1/payment_intents/search", params={"query": f"metadata['idempotency_key']:'{key}'"}
        )
        r.raise_for_status()
        intents = r.json()["data"]
        charged = sum(int(i.get("amount_received") or 0) for i in intents)
        refunded = 0
        for intent in intents:
            rr = await http.get("/v1/refunds", params={"payment_intent": intent["id"], "limit": 100})
            rr.raise_for_status()
            refunded += sum(int(x["amount"]) for x in rr.json()["data"] if x["status"] == "succeeded")
    return charged, refunded


async def ledger_of(stack: Stack, email: str, provider: str) -> LedgerView | None:
    """The principal's monthly spend at `provider` (its book, or its ledger), or None if no purchase
    ever reached it."""
    ledger_id = monthly_ledger_id(stack.principal_id(email), provider, datetime.now(UTC))
    try:
        return await SpendActivities(stack.client, "").ledger_view(ledger_id)
    except (RPCError, WorkflowQueryFailedError):
        return None


async def assert_ledger_equals_stripe(stack: Stack, email: str, provider: str, request_id: str) -> int:
    """Committed == charged - refunded, nothing left reserved; returns what Stripe kept."""
    charged, refunded = await stripe_kept(stack, provider, request_id)
    view = await ledger_of(stack, email, provider)
    committed = view.committed.amount if view else 0
    reserved = view.reserved.amount if view else 0
    assert (committed, reserved) == (charged - refunded, 0), (view, charged, refunded)
    return charged - refunded


async def arm_fault(stack: Stack, provider: str, route: str, kind: str, count: int = 1) -> None:
    async with httpx.AsyncClient() as http:
        fault = {"route": route, "kind": kind, "count": count}
        r = await http.post(f"{stack.provider_urls[provider]}/_sim/faults", json=fault)
        assert r.status_code == 201, r.text


async def _to_payment(stack: Stack, email: str, req: Any, *, purchase: bool = False) -> None:
    await stack.qm.submit(req)
    await stack.decide((await stack.wait_for_approval(req.request_id, "terms"))["approval_id"], email)
    pm = await stack.wait_for_approval(req.request_id, "payment_method")
    await stack.attach_card(pm["details"]["checkout_url"])
    if purchase:
        await stack.decide((await stack.wait_for_approval(req.request_id, "purchase"))["approval_id"], email)


async def test_reversible_purchase_undone_after_its_charge_is_refunded(stack: Stack) -> None:
    email = new_email()
    req = stack.request("cloud/r2", email)
    await arm_fault(stack, "cloud", "mint_credential", "error_409")  # fails after the charge
    await _to_payment(stack, email, req)
    res = await result_of(stack, req.request_id)
    assert (res.outcome, res.error_code) == ("undone", "PROVIDER_ERROR"), res
    assert res.kept_charge is None
    assert any("refunded" in c for c in res.compensations), res.compensations
    (row,) = await resources_named(stack, "cloud", req.name)
    assert row["status"] == "removed"
    assert await stripe_kept(stack, "cloud", req.request_id) == (500, 500)
    assert await assert_ledger_equals_stripe(stack, email, "cloud", req.request_id) == 0


async def test_irreversible_purchase_undone_after_its_charge_keeps_it_committed(stack: Stack) -> None:
    email = new_email()
    contact = {"name": "Alice", "email": "alice@example.com", "country": "DE"}
    config = {"domain": f"{secrets.token_hex(4)}.dev", "registrant_contact": contact}
    req = stack.request("cloud/registrar:domain", email, configuration=config)
    await arm_fault(stack, "cloud", "mint_credential", "error_409")
    await _to_payment(stack, email, req, purchase=True)
    res = await result_of(stack, req.request_id)
    assert (res.outcome, res.error_code) == ("undone", "PROVIDER_ERROR"), res
    assert res.kept_charge is not None and res.kept_charge.amount.amount == 1099
    assert any("kept committed" in c for c in res.compensations), res.compensations
    (row,) = await resources_named(stack, "cloud", req.name)
    assert row["status"] == "complete"  # the registrar cannot undo it
    assert await stripe_kept(stack, "cloud", req.request_id) == (1099, 0)
    assert await assert_ledger_equals_stripe(stack, email, "cloud", req.request_id) == 1099


def _tokens_of(stack: Stack, workflow_id: str) -> list[dict[str, Any]]:
    """The Shared Payment Tokens the local Stripe issued for one workflow (read from its own file)."""
    db = sqlite3.connect(f"file:{stack.data_dir / 'stripe.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT body FROM objects WHERE kind = 'shared_payment.issued_token' "
            "AND json_extract(body, '$.shared_metadata.qm_workflow_id') = ?",
            (workflow_id,),
        ).fetchall()
    finally:
        db.close()
    return [json.loads(r[0]) for r in rows]


async def test_payment_token_issued_once_when_the_response_is_lost(stack: Stack) -> None:
    """Stripe commits the token and the response is dropped: the retry (same key, same parameters,
    the expiry from workflow time) replays it instead of being refused as an idempotency error."""
    email = new_email()
    req = stack.request("cloud/r2", email)
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{stack.stripe_url}/_sim/faults",
            json={"path": "/v1/shared_payment/issued_tokens", "method": "POST", "kind": "drop_after_commit"},
        )
        assert r.status_code == 200
    try:
        await _to_payment(stack, email, req)
        res: ProvisionResult = await result_of(stack, req.request_id, timeout=90)
    finally:
        async with httpx.AsyncClient() as http:
            await http.delete(f"{stack.stripe_url}/_sim/faults")
    assert res.outcome == "completed", res
    tokens = _tokens_of(stack, f"provision-{req.request_id}")
    assert len(tokens) == 1, tokens
    assert tokens[0]["status"] == "deactivated"  # consumed by the charge, then revoked: none left active
    assert await stripe_kept(stack, "cloud", req.request_id) == (500, 0)
    for _ in range(50):  # the commit is the workflow's last step before its result
        if (view := await ledger_of(stack, email, "cloud")) and view.committed.amount == 500:
            break
        await asyncio.sleep(0.1)
    assert await assert_ledger_equals_stripe(stack, email, "cloud", req.request_id) == 500
