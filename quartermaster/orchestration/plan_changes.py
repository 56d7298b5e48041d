"""Plan changes from the API: quote the proration from the resource's renewal and the catalog, and
start (or find) the `PlanChangeWorkflow`. The API checks ownership before calling these."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from temporalio.client import WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from models.errors import ErrorCode, QuartermasterError
from models.plan_change import (
    Direction,
    PlanChangeBody,
    PlanChangeQuote,
    PlanChangeRequest,
    PlanChangeResult,
    PlanChangeView,
    prorate,
)
from models.renewal import RenewalView, renewal_workflow_id
from models.request import Actor
from quartermaster.orchestration.requests import Orchestrator

PLAN_CHANGE_TIMEOUT = timedelta(days=2)


async def _renewal(orch: Orchestrator, resource_id: str) -> RenewalView:
    res = await orch._provision_of(resource_id)  # NOT_FOUND for an unknown resource
    provider = res.service_id.split("/", 1)[0]
    handle = orch.temporal.get_workflow_handle(renewal_workflow_id(provider, resource_id))
    try:
        desc = await handle.describe()
        if desc.status == WorkflowExecutionStatus.RUNNING:
            view: RenewalView = await handle.query("view", result_type=RenewalView)
            if view.status in ("scheduled", "past_due"):
                return view
    except (RPCError, WorkflowQueryFailedError):
        pass
    raise QuartermasterError(ErrorCode.PLAN_CHANGE_NOT_ALLOWED, "only a renewing paid resource changes plan")


async def plan_quote(orch: Orchestrator, resource_id: str, to_service_id: str) -> PlanChangeQuote:
    """What the change costs now (prorated) and from the next renewal; nothing moves."""
    view = await _renewal(orch, resource_id)
    current = await orch.quote(view.service_id)
    target = await orch.quote(to_service_id)
    if to_service_id not in current.service.allowed_updates:
        raise QuartermasterError(
            ErrorCode.PLAN_CHANGE_NOT_ALLOWED, f"{view.service_id} cannot become {to_service_id}"
        )
    if target.recurring is None or target.interval != view.interval or view.anchor is None:
        raise QuartermasterError(
            ErrorCode.PLAN_CHANGE_NOT_ALLOWED, "the new plan must renew on the same interval"
        )
    return prorate(
        resource_id=resource_id,
        from_service_id=view.service_id,
        to_service_id=to_service_id,
        old_price=view.price,
        new_price=target.recurring,
        interval=view.interval,
        anchor=view.anchor,
        next_period=view.period,
        now=datetime.now(UTC),
    )


async def change_plan(
    orch: Orchestrator, resource_id: str, body: PlanChangeBody, actor: Actor, direction: Direction
) -> PlanChangeView:
    """Start the change (the same `request_id` finds the same one) and wait a moment for it."""
    quote = await plan_quote(orch, resource_id, body.to_service_id)
    if quote.direction != direction:
        raise QuartermasterError(
            ErrorCode.PLAN_CHANGE_NOT_ALLOWED,
            f"{body.to_service_id} is a {quote.direction}, not a {direction}",
        )
    request_id = body.request_id or uuid.uuid4().hex[:16]
    actor = orch._human_signed(actor, request_id, body.to_service_id)
    req = PlanChangeRequest(
        resource_id=resource_id,
        service_id=quote.from_service_id,
        to_service_id=body.to_service_id,
        direction=direction,
        request_id=request_id,
        actor=actor,
    )
    wid = f"plan-{resource_id}-{request_id}"
    handle = await orch.temporal.start_workflow(
        "PlanChangeWorkflow",
        req,
        id=wid,
        task_queue=orch.settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        result_type=PlanChangeResult,
        static_summary=f"{direction} {resource_id} to {body.to_service_id}",
        execution_timeout=PLAN_CHANGE_TIMEOUT,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_seconds
    while True:
        desc = await handle.describe()
        if desc.status != WorkflowExecutionStatus.RUNNING:
            result: PlanChangeResult = await handle.result()
            return PlanChangeView(
                request_id=request_id, state=result.outcome, quote=result.quote or quote, result=result
            )
        pending = await handle.query("pending_approvals")
        if pending:
            return PlanChangeView(
                request_id=request_id,
                state="awaiting_approval",
                quote=quote,
                approval_id=pending[0]["approval_id"],
            )
        if loop.time() >= deadline:
            return PlanChangeView(request_id=request_id, state="running", quote=quote)
        await asyncio.sleep(0.2)
