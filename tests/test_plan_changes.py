"""Plan changes on the time-skipping test server with the whole stack: an upgrade (approved, the
prorated difference charged now) and a downgrade (credited to the next renewal), each followed by a
renewal at the new price; Stripe's charges per month equal the ledgers'. A change outside the
catalog's `allowed_updates` or `constraints` is refused and moves no money."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.testing import WorkflowEnvironment

from models.ledger import month_of
from models.plan_change import PlanChangeRequest, PlanChangeResult
from tests.fixtures.stack import Stack, new_email
from tests.test_renewals import (
    DAY,
    charged_per_month,
    ledger,
    provision,
    renewal,
    stripe_intents,
    ts,  # noqa: F401 - the fixture
    until,
)


async def change(
    stack: Stack, email: str, resource_id: str, frm: str, to: str, direction: str
) -> tuple[Any, str]:
    request_id = uuid.uuid4().hex[:12]
    actor = stack.human(email, request_id=request_id, service_id=to)
    handle = await stack.client.start_workflow(
        "PlanChangeWorkflow",
        PlanChangeRequest(
            resource_id=resource_id,
            service_id=frm,
            to_service_id=to,
            direction=direction,
            request_id=request_id,
            actor=actor,
        ),  # type: ignore[arg-type]
        id=f"plan-{resource_id}-{request_id}",
        task_queue=stack.settings.task_queue,
        result_type=PlanChangeResult,
    )
    return handle, f"plan-{resource_id}-{request_id}"


async def months_match(stack: Stack, email: str, *resource_ids: str) -> dict[str, int]:
    """Every month's db ledger holds exactly what Stripe kept for these (all the principal's) resources."""
    per_month = charged_per_month(await stripe_intents(stack, set(resource_ids)))
    pid = stack.principal_id(email)
    for month, kept in per_month.items():
        view = await ledger(stack, f"ledger-{pid}-db-{month}")
        assert view is not None and (view.committed.amount, view.reserved.amount) == (kept, 0), (month, view)
    return per_month


async def test_an_upgrade_is_approved_prorated_charged_and_renews_at_the_new_price(
    ts: tuple[WorkflowEnvironment, Stack],  # noqa: F811
) -> None:
    env, stack = ts
    email = new_email()
    res = await provision(stack, email, "db/postgres:pro")
    assert res.resource_id
    rid = res.resource_id
    await env.sleep(10 * DAY)
    before = await renewal(stack, "db", rid)
    assert before.next_due is not None and before.anchor is not None
    now = await env.get_current_time()
    handle, wid = await change(stack, email, rid, "db/postgres:pro", "db/postgres:team", "upgrade")

    async def asked() -> dict[str, Any] | None:
        pending = await handle.query("pending_approvals")
        return next((a for a in pending if a["kind"] == "purchase"), None)

    approval = await until(asked, "the upgrade's approval")
    quoted = approval["details"]["plan_change"]
    left = (before.next_due - now) / (before.next_due - before.anchor)
    expected = round(5000 * left) - round(2500 * left)
    assert abs(quoted["due_now"]["amount"] - expected) <= 2, (quoted, expected)
    await until(lambda: _has_code(stack, email, approval["approval_id"]), "the code")
    await stack.decide(approval["approval_id"], email)
    result: PlanChangeResult = await handle.result()
    assert result.outcome == "completed", result
    assert result.charged is not None and result.charged.amount == quoted["due_now"]["amount"]
    (row,) = [r for r in (await stack.provider_state("db"))["resources"] if r["resource_id"] == rid]
    assert row["service_id"] == "db/postgres:team"
    # Stripe holds the purchase (25.00) and the prorated difference, both in this month's ledger
    per_month = await months_match(stack, email, rid)
    assert per_month[month_of(now)] >= 2500 + result.charged.amount
    # the next renewal is at the new price
    await env.sleep(before.next_due - now + DAY)
    after = await renewal(stack, "db", rid)
    assert (after.service_id, after.charges[-1].amount.amount) == ("db/postgres:team", 5000), after
    await months_match(stack, email, rid)
    await maybe_record_plan(stack, wid, "plan-change-upgrade")


async def test_a_downgrade_credits_the_next_renewal(ts: tuple[WorkflowEnvironment, Stack]) -> None:  # noqa: F811
    env, stack = ts
    email = new_email()
    res = await provision(stack, email, "db/postgres:team")
    assert res.resource_id
    rid = res.resource_id
    await env.sleep(10 * DAY)
    before = await renewal(stack, "db", rid)
    assert before.next_due is not None
    now = await env.get_current_time()
    handle, wid = await change(stack, email, rid, "db/postgres:team", "db/postgres:pro", "downgrade")
    result: PlanChangeResult = await handle.result()
    assert result.outcome == "completed" and result.charged is None, result
    assert result.quote is not None
    credit = result.quote.next_renewal_credit.amount
    assert 0 < credit < 2500
    assert len(await stripe_intents(stack, {rid})) == 1  # nothing charged, nothing refunded
    await env.sleep(before.next_due - now + DAY)
    after = await renewal(stack, "db", rid)
    assert after.service_id == "db/postgres:pro"
    assert after.charges[-1].amount.amount == 2500 - credit, after
    assert after.credit == 0
    await months_match(stack, email, rid)
    await maybe_record_plan(stack, wid, "plan-change-downgrade")


async def test_changes_outside_allowed_updates_or_constraints_are_refused(
    ts: tuple[WorkflowEnvironment, Stack],  # noqa: F811
) -> None:
    env, stack = ts
    email = new_email()
    res = await provision(stack, email, "db/postgres:pro")
    assert res.resource_id
    rid = res.resource_id
    handle, _ = await change(stack, email, rid, "db/postgres:pro", "db/postgres:free", "downgrade")
    result: PlanChangeResult = await handle.result()
    assert (result.outcome, result.error_code) == ("rejected", "PLAN_CHANGE_NOT_ALLOWED"), result
    handle, _ = await change(stack, email, rid, "db/postgres:pro", "db/postgres:team", "downgrade")
    result = await handle.result()
    assert (result.outcome, result.error_code) == ("rejected", "PLAN_CHANGE_NOT_ALLOWED"), result
    # at most one team database per account: a second one's upgrade is refused by the provider after
    # the approval, and the reservation and token are given back
    team = await provision(stack, email, "db/postgres:team")
    assert team.resource_id
    handle, _ = await change(stack, email, rid, "db/postgres:pro", "db/postgres:team", "upgrade")

    async def asked() -> dict[str, Any] | None:
        return next((a for a in await handle.query("pending_approvals") if a["kind"] == "purchase"), None)

    approval = await until(asked, "the approval")
    await until(lambda: _has_code(stack, email, approval["approval_id"]), "the code")
    await stack.decide(approval["approval_id"], email)
    result = await handle.result()
    assert (result.outcome, result.error_code) == ("rejected", "PLAN_CHANGE_NOT_ALLOWED"), result
    (row,) = [r for r in (await stack.provider_state("db"))["resources"] if r["resource_id"] == rid]
    assert row["service_id"] == "db/postgres:pro"
    assert len(await stripe_intents(stack, {rid})) == 1
    await months_match(stack, email, rid, team.resource_id)
    del env


async def _has_code(stack: Stack, email: str, approval_id: str) -> bool:
    return any(m.get("approval_id") == approval_id for m in stack.inbox(email))


async def maybe_record_plan(stack: Stack, wid: str, name: str) -> None:
    from tests.fixtures.history_recorder import maybe_record

    await maybe_record(stack.client, wid, name)
