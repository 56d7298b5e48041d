"""Renewals under the agent layers, on the time-skipping server with the whole stack on loopback: a
monthly plan an agent bought renews in that agent's month of the due date (not in its purchases per
hour), a delegate's in every agent of its chain, and a renewal its agent's limits no longer allow (the
month, the per-purchase maximum) asks no one, charges nothing at the local Stripe server and suspends
at the due date (docs/decisions.md, "Renewals under the agent layers"). The refusal check also runs
against a deliberately broken renewal that leaves the agent layers out, and catches it (that renewal
charges)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

import models.ledger
from activities.spend import SpendActivities
from models.ledger import agent_ledger_id, month_of, monthly_ledger_id, velocity_ledger_id
from models.limits import LimitKind
from models.money import Money
from models.renewal import RenewalView, renewal_workflow_id
from models.request import Actor
from models.session import DelegationRequest
from quartermaster.crypto.authority import AuthoritySigner
from tests.fixtures.stack import Stack, new_email
from tests.test_agent_limits import change
from tests.test_provision_agent_limits import _agent
from tests.test_renewals import (
    DAY,
    charged_per_month,
    ledger,
    notices,
    provision,
    record_first_run,
    renewal,
    skip,
    stripe_intents,
    to_notice,
    ts,
    until,
)

__all__ = ["ts"]  # the time-skipping stack fixture

AGENT = "planner"


def _spend(stack: Stack) -> SpendActivities:
    return SpendActivities(
        stack.client, stack.settings.task_queue, authority=AuthoritySigner.from_keyring(stack.keyring)
    )


async def _set(
    stack: Stack, principal: str, kind: LimitKind, usd: float | None = None, per_hour: int | None = None
) -> None:
    """A limit change as it applies once the human approved it."""
    await _spend(stack).set_spend_limit(change(principal, kind, agent=AGENT, usd=usd, per_hour=per_hour))


async def _bought_by_the_agent(stack: Stack, email: str) -> tuple[str, datetime]:
    """USD 5 a month of r2, bought by the agent under its session; its resource and first due date."""
    actor = await _agent(stack, email, AGENT)
    res = await provision(stack, email, "cloud/r2", actor=actor)
    assert res.resource_id
    view = await renewal(stack, "cloud", res.resource_id)
    assert view.next_due is not None and view.status == "scheduled"
    return res.resource_id, view.next_due


async def test_a_renewal_counts_in_the_buying_agents_month_of_its_due_date(ts) -> None:  # type: ignore[no-untyped-def]
    env, stack = ts
    email = new_email()
    pid = stack.principal_id(email)
    await _set(stack, pid, "agent_monthly", usd=15)
    await _set(stack, pid, "velocity", per_hour=5)  # so the agent's purchases per hour are counted
    bought_at = await env.get_current_time()
    resource_id, due = await _bought_by_the_agent(stack, email)
    agent_month = agent_ledger_id(pid, AGENT, due)
    assert month_of(due) != month_of(bought_at)  # a month later: another agent ledger

    # at the notice the renewal holds USD 5 in the agent's month of the due date
    await to_notice(env, due)

    async def held() -> Any:
        view = await ledger(stack, agent_month)
        return view if view is not None and view.reserved.amount == 500 else None

    await until(held, "the renewal's hold in the agent's month")
    await env.sleep(4 * DAY)  # past the due date
    view = await renewal(stack, "cloud", resource_id)
    assert [c.period for c in view.charges] == [1] and view.refused is None, view

    # what Stripe kept for the due month is what the agent's month and the provider's cap hold
    charged = charged_per_month(await stripe_intents(stack, {resource_id}))
    assert charged.get(month_of(due)) == 500, charged
    month = await ledger(stack, agent_month)
    assert month is not None and (month.committed.amount, month.reserved.amount) == (500, 0), month
    assert month.limit.amount == 1_500
    cap = await ledger(stack, monthly_ledger_id(pid, "cloud", due))
    assert cap is not None and (cap.committed.amount, cap.reserved.amount) == (500, 0)
    # the purchase's own month kept only the purchase
    first = await ledger(stack, agent_ledger_id(pid, AGENT, bought_at))
    assert first is not None and first.committed.amount == 500
    # a renewal is no new purchase: the agent's purchases per hour counted only the purchase
    hour = await ledger(stack, velocity_ledger_id(pid, AGENT))
    assert hour is not None and hour.purchases_committed == 1 and hour.reserved.amount == 0, hour
    await record_first_run(stack, renewal_workflow_id("cloud", resource_id), "renewal-agent-layers")


@pytest.mark.parametrize(
    ("kind", "code"),
    [("agent_monthly", "AGENT_MONTHLY_LIMIT_EXCEEDED"), ("per_transaction", "TRANSACTION_LIMIT_EXCEEDED")],
)
async def test_a_renewal_the_agents_limit_refuses_asks_no_one_charges_nothing_and_suspends(  # type: ignore[no-untyped-def]
    ts, kind: LimitKind, code: str
) -> None:
    env, stack = ts
    email = new_email()
    pid = stack.principal_id(email)
    resource_id, due = await _bought_by_the_agent(stack, email)
    await _set(stack, pid, kind, usd=4.99)  # after the purchase: the USD 5 renewal no longer fits
    await to_notice(env, due)
    handle = stack.client.get_workflow_handle(renewal_workflow_id("cloud", resource_id))

    async def refused() -> RenewalView | None:
        view = await renewal(stack, "cloud", resource_id)
        return view if view.refused is not None else None

    view = await until(refused, "the agent layer's refusal")
    assert (view.status, view.refused, view.held) == ("declined", code, False), view
    # a one-time approval could not lift an agent's limit: the human is told, not asked
    assert await handle.query("pending_approvals") == []
    assert not [m for m in stack.inbox(email) if m.get("kind") == "spend_limit"]
    told = await until(
        lambda: asyncio.sleep(0, notices(stack, email, "renewal_suspended", resource_id)), "the notice"
    )
    assert code in told[0]["summary"], told

    await env.sleep(4 * DAY)  # past the due date
    view = await renewal(stack, "cloud", resource_id)
    assert (view.status, view.charges) == ("suspended", []), view
    assert charged_per_month(await stripe_intents(stack, {resource_id})).get(month_of(due), 0) == 0
    for ledger_id in (agent_ledger_id(pid, AGENT, due), monthly_ledger_id(pid, "cloud", due)):
        after = await ledger(stack, ledger_id)
        assert after is None or (after.committed.amount, after.reserved.amount) == (0, 0), after
    (row,) = [
        r for r in (await stack.provider_state("cloud"))["resources"] if r["resource_id"] == resource_id
    ]
    assert row["status"] == "removed"
    assert len(notices(stack, email, "renewal_suspended", resource_id)) == 2  # declined, then suspended
    if kind == "agent_monthly":
        await record_first_run(stack, renewal_workflow_id("cloud", resource_id), "renewal-agent-refused")


async def test_the_refusal_check_catches_a_renewal_that_leaves_the_agent_layers_out(  # type: ignore[no-untyped-def]
    ts, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, stack = ts
    original = models.ledger.agent_layers

    def broken(*args: Any, new_purchase: bool = True, **kw: Any) -> list[models.ledger.LedgerLayer]:
        return original(*args, new_purchase=new_purchase, **kw) if new_purchase else []

    # the sandbox imports the renewal workflow afresh for each run, from the passed-through models
    monkeypatch.setattr(models.ledger, "agent_layers", broken)
    email = new_email()
    pid = stack.principal_id(email)
    resource_id, due = await _bought_by_the_agent(stack, email)
    await _set(stack, pid, "agent_monthly", usd=4.99)
    await to_notice(env, due)
    await env.sleep(4 * DAY)
    view = await renewal(stack, "cloud", resource_id)
    # what the test above forbids: the renewal went through and Stripe kept USD 5 for the due month
    assert ([c.period for c in view.charges], view.refused) == ([1], None), view
    assert charged_per_month(await stripe_intents(stack, {resource_id})).get(month_of(due)) == 500
    assert await ledger(stack, agent_ledger_id(pid, AGENT, due)) is None


async def _delegate(stack: Stack, email: str) -> Actor:
    """`helper`, a sub-agent of `planner` under a delegated session (its chain: planner, helper)."""
    root = await stack.sessions.open(
        email=email, agent=AGENT, allowed_services=["cloud/*"], budget_minor=5000, max_depth=2
    )
    assert root.approval_id is not None
    await until(
        lambda: asyncio.sleep(0, any(m.get("approval_id") == root.approval_id for m in stack.inbox(email))),
        "the session's approval",
    )
    assert (await stack.decide(root.approval_id, email)).status == "ACCEPTED"
    token = await until(lambda: stack.sessions.token(root.session_id), "the session's token")
    child = await stack.sessions.delegate(
        DelegationRequest(
            session_token=token,
            identity_token=stack.identity(AGENT),
            to_agent="helper",
            allowed_services=["cloud/r2"],
            budget=Money(amount=2000),
        )
    )
    return Actor(
        principal_email=email, agent="helper", session_token=child.session_token,
        identity_token=stack.identity("helper"),
    )  # fmt: skip


async def test_a_delegates_renewal_counts_in_every_agent_of_its_chain(ts) -> None:  # type: ignore[no-untyped-def]
    env, stack = ts
    email = new_email()
    pid = stack.principal_id(email)
    res = await provision(stack, email, "cloud/r2", actor=await _delegate(stack, email))
    assert res.resource_id
    due = (await renewal(stack, "cloud", res.resource_id)).next_due
    assert due is not None
    await to_notice(env, due)
    await skip(env, 4 * DAY)
    view = await renewal(stack, "cloud", res.resource_id)
    assert [c.period for c in view.charges] == [1], view
    assert charged_per_month(await stripe_intents(stack, {res.resource_id})).get(month_of(due)) == 500
    for agent in ("helper", AGENT):  # the delegate cannot escape its delegator's month under a new name
        month = await ledger(stack, agent_ledger_id(pid, agent, due))
        assert month is not None and (month.committed.amount, month.reserved.amount) == (500, 0), agent
