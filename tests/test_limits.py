"""Limits, limit approvals, overrides, alerts and input validation, on the real dev server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from models.approval import ApprovalDecision, DecisionOutcome
from models.ledger import (
    CommitLayers,
    LedgerLayer,
    ReleaseLayers,
    ReserveLayers,
    ReserveSpend,
    monthly_ledger_id,
)
from models.limits import LimitChange, LimitChangeResult, SpendSummaryRequest
from models.money import MAX_MINOR_UNITS, Money
from models.secret import Secret
from providers.registry import ProviderRegistry
from quartermaster.config import Settings
from quartermaster.keys import Keyring
from quartermaster.orchestration.requests import Orchestrator
from tests.fixtures.spend import SpendStack, inbox_messages, new_principal, poll


def monthly(principal: str, provider: str = "cloud") -> LedgerLayer:
    return LedgerLayer(
        ledger_id=monthly_ledger_id(principal, provider, datetime.now(UTC)),
        limit=Money.usd(100),
        kind="monthly",
    )


def reserve(principal: str, pid: str, usd: float, *layers: LedgerLayer, **kw: object) -> ReserveLayers:
    return ReserveLayers(
        purchase_id=pid, amount=Money.usd(usd), layers=list(layers), principal_id=principal, **kw
    )  # type: ignore[arg-type]


def change(principal: str, usd: float, provider: str | None = None) -> LimitChange:
    cid = f"test-{uuid.uuid4().hex[:8]}"
    return LimitChange(
        change_id=cid,
        principal_id=principal,
        provider=provider,
        limit=Money.usd(usd),
        approval_id=f"{cid}.limit_change",
        changed_at=datetime.now(UTC),
    )


async def test_default_limit_is_usd_100_per_provider(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    summary = await spend.spend_view(SpendSummaryRequest(principal_id=principal))
    assert {p.provider: (p.ledger.limit, p.limit_source) for p in summary.providers} == {
        "cloud": (Money.usd(100), "default"),
        "db": (Money.usd(100), "default"),
        "mail": (Money.usd(100), "default"),
    }
    assert (await spend.reserve_spend(reserve(principal, "a", 60, monthly(principal)))).ok
    refused = await spend.reserve_spend(reserve(principal, "b", 50, monthly(principal)))
    assert not refused.ok and refused.outcome is not None
    assert refused.outcome.status == "over_limit"
    assert (refused.outcome.limit, refused.outcome.reserved) == (Money.usd(100), Money.usd(60))
    # another provider has its own USD 100
    assert (await spend.reserve_spend(reserve(principal, "b", 50, monthly(principal, "db")))).ok


async def test_per_provider_limit_beats_the_global_one(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    # a ledger that exists before the change gets the new limit pushed to it
    assert (await spend.reserve_spend(reserve(principal, "early", 10, monthly(principal, "db")))).ok
    await spend.set_spend_limit(change(principal, 30, provider="db"))
    await spend.set_spend_limit(change(principal, 200))
    summary = await spend.spend_view(SpendSummaryRequest(principal_id=principal))
    by = {p.provider: p for p in summary.providers}
    assert (by["db"].ledger.limit, by["db"].limit_source) == (Money.usd(30), "provider")
    assert (by["cloud"].ledger.limit, by["cloud"].limit_source) == (Money.usd(200), "global")
    assert (await spend.reserve_spend(reserve(principal, "big", 150, monthly(principal, "cloud")))).ok
    assert not (await spend.reserve_spend(reserve(principal, "db2", 25, monthly(principal, "db")))).ok
    assert (await spend.reserve_spend(reserve(principal, "db3", 20, monthly(principal, "db")))).ok


async def test_over_limit_then_one_time_override_or_raise(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    cap = monthly(principal)
    assert (await spend.reserve_spend(reserve(principal, "a", 90, cap))).ok
    assert not (await spend.reserve_spend(reserve(principal, "b", 20, cap))).ok
    # the human approved purchase b once: the limit is lifted by exactly its overshoot
    approved = await spend.reserve_spend(
        reserve(principal, "b", 20, cap, override_approval_id="provision-x.spend_limit")
    )
    assert approved.ok and approved.outcome is not None
    assert approved.outcome.effective_limit == Money.usd(110) and approved.outcome.remaining.amount == 0
    assert not (await spend.reserve_spend(reserve(principal, "c", 0.01, cap))).ok
    await spend.commit_spend(CommitLayers(purchase_id="b", amount=Money.usd(15), layers=[cap]))
    view = await spend.ledger_view(cap.ledger_id)
    assert view is not None
    assert (view.committed, view.reserved, view.effective_limit) == (
        Money.usd(15),
        Money.usd(90),
        Money.usd(105),
    )
    # or the human raises the limit: the refused purchase id can simply retry
    assert not (await spend.reserve_spend(reserve(principal, "d", 50, cap))).ok
    await spend.set_spend_limit(change(principal, 200, provider="cloud"))
    assert (await spend.reserve_spend(reserve(principal, "d", 50, cap))).ok
    # a released purchase id is settled: it can never reserve again
    await spend.release_spend(ReleaseLayers(purchase_id="d", layers=[cap]))
    again = await spend.reserve_spend(reserve(principal, "d", 50, cap))
    assert not again.ok and again.outcome is not None and again.outcome.status == "already_released"


async def test_layers_are_all_or_nothing(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    cap = monthly(principal)
    budget = LedgerLayer(
        ledger_id=f"budget-session-{uuid.uuid4().hex[:8]}", limit=Money.usd(20), kind="budget"
    )
    out = await spend.reserve_spend(reserve(principal, "a", 25, cap, budget))
    assert not out.ok and out.refused_by == budget
    assert await spend.ledger_view(cap.ledger_id) is None  # the cap was never touched
    assert (await spend.reserve_spend(reserve(principal, "b", 15, cap, budget))).ok
    assert (await spend.reserve_spend(reserve(principal, "c", 84, cap))).ok  # cap: 99 of 100 used
    out = await spend.reserve_spend(reserve(principal, "d", 4, cap, budget))
    assert not out.ok and out.refused_by == cap
    budget_view = await spend.ledger_view(budget.ledger_id, principal)
    cap_view = await spend.ledger_view(cap.ledger_id)
    assert budget_view is not None and cap_view is not None
    assert budget_view.reserved == Money.usd(15) and [r.purchase_id for r in budget_view.reservations] == [
        "b"
    ]
    assert cap_view.reserved == Money.usd(99)


async def test_alerts_at_50_80_100_once_each(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    cap = monthly(principal)
    for pid, usd in (("a", 30), ("b", 25), ("c", 10), ("d", 20), ("e", 15)):  # 30, 55, 65, 85, 100
        assert (await spend.reserve_spend(reserve(principal, pid, usd, cap))).ok
        await spend.commit_spend(CommitLayers(purchase_id=pid, amount=Money.usd(usd), layers=[cap]))
        await spend.commit_spend(
            CommitLayers(purchase_id=pid, amount=Money.usd(usd), layers=[cap])
        )  # a retry
    await spend.set_spend_limit(change(principal, 100, provider="cloud"))  # re-evaluates: nothing new
    alerts = await poll(
        lambda: _async(inbox_messages(spend_stack, principal, "spend_alert")), lambda a: len(a) >= 3
    )
    assert sorted(a["threshold"] for a in alerts) == [50, 80, 100]
    events = await poll(
        lambda: _async([r for r in spend_stack.audit.iter_all() if r.event.action == "spend.alert"]),
        lambda e: len(e) >= 3,
    )
    assert sorted(r.event.details["threshold"] for r in events if r.event.principal_id == principal) == [
        50,
        80,
        100,
    ]
    view = await spend.ledger_view(cap.ledger_id)
    assert view is not None and view.alerts_sent == [50, 80, 100]


async def _async(value):  # type: ignore[no-untyped-def]
    return value


async def test_currency_mismatch_and_bad_amounts_change_nothing(
    ledger_stack: SpendStack, client: Client
) -> None:
    """A ledger's validators (tests/test_spend_books.py has the books')."""
    spend, principal = ledger_stack.spend, new_principal()
    cap = monthly(principal)
    assert (await spend.reserve_spend(reserve(principal, "a", 10, cap))).ok
    before = await spend.ledger_view(cap.ledger_id)
    eur = ReserveLayers(purchase_id="eur", amount=Money(amount=500, currency="eur"), layers=[cap])
    with pytest.raises(ApplicationError) as info:
        await spend.reserve_spend(eur)
    assert info.value.type == "CURRENCY_MISMATCH" and info.value.non_retryable
    handle = client.get_workflow_handle(cap.ledger_id)
    accepted_before = await _accepted_updates(client, cap.ledger_id)
    for amount in (-500, 0, MAX_MINOR_UNITS + 1):  # negative / zero / huge: refused before history
        bad = ReserveSpend.model_construct(
            purchase_id=f"bad{amount}", amount=Money.model_construct(amount=amount)
        )
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("reserve", bad)
    assert await _accepted_updates(client, cap.ledger_id) == accepted_before
    assert await spend.ledger_view(cap.ledger_id) == before


async def _accepted_updates(client: Client, workflow_id: str) -> int:
    events = [e async for e in client.get_workflow_handle(workflow_id).fetch_history_events()]
    return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED for e in events)


async def test_limit_change_needs_the_human_code(
    spend_stack: SpendStack, client: Client, keyring: Keyring, tmp_path: Path
) -> None:
    email = f"human-{uuid.uuid4().hex[:6]}@example.com"
    principal = keyring.principal_id(email)
    qm = Orchestrator(
        temporal=client,
        settings=Settings(data_dir=tmp_path / "qm", task_queue=spend_stack.task_queue, providers={}),
        keyring=keyring,
        registry=ProviderRegistry({}),
    )
    cap = monthly(principal, "db")
    assert (await spend_stack.spend.reserve_spend(reserve(principal, "a", 80, cap))).ok

    workflow_id, approval_id = await qm.request_limit_change(email=email, limit=Money.usd(250), provider="db")
    assert approval_id == f"{workflow_id}.limit_change" and email not in approval_id

    notices = await poll(
        lambda: _async(inbox_messages(spend_stack, principal, "approval_request")), lambda m: len(m) == 1
    )
    assert notices[0]["approval_id"] == approval_id and notices[0]["kind"] == "limit_change"
    handle = client.get_workflow_handle(workflow_id, result_type=LimitChangeResult)
    wrong = ApprovalDecision(approval_id=approval_id, decision="approve", code=Secret("AAAAA-BBBBB"))
    out = await qm.decide(wrong, caller=principal)
    assert (out.status, out.tries_left) == ("WRONG_CODE", 4)
    # an empty code is never a try; a decision sent straight to Temporal is not even looked at
    assert (await qm.decide(wrong.model_copy(update={"code": Secret("")}), caller=principal)).tries_left == 4
    right = ApprovalDecision(approval_id=approval_id, decision="approve", code=Secret(notices[0]["code"]))
    unsigned = await handle.execute_update("submit_decision", right, result_type=DecisionOutcome)
    assert unsigned.status == "UNAUTHENTICATED"
    summary = await spend_stack.spend.spend_view(SpendSummaryRequest(principal_id=principal))
    assert {p.provider: p.ledger.limit for p in summary.providers}["db"] == Money.usd(100)
    assert not (await spend_stack.spend.reserve_spend(reserve(principal, "b", 50, cap))).ok

    out = await qm.decide(right, caller=principal)
    assert out.status == "ACCEPTED"
    result = await handle.result()
    assert result.status == "applied"
    assert (await spend_stack.spend.reserve_spend(reserve(principal, "b", 50, cap))).ok  # 130 of 250

    summary = await spend_stack.spend.spend_view(SpendSummaryRequest(principal_id=principal))
    shown = {p.provider: p.ledger for p in summary.providers}
    assert shown["db"].limit == Money.usd(250)
    assert shown["db"].reserved.amount == 13_000
    assert shown["cloud"].limit.amount == 10_000
    changed = [r.event for r in spend_stack.audit.iter_all() if r.event.action == "limit.changed"]
    assert [e.approved_by for e in changed if e.principal_id == principal] == [approval_id]
