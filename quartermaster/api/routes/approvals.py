"""A human's pending approvals and decisions. Human only: an agent can never see an approval's details
(Checkout and OAuth URLs) or decide one, whatever code it holds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, Security
from temporalio.service import RPCError

from models.api import ApprovalView, DecisionBody
from models.approval import (
    APPROVAL_PAGE,
    APPROVALS_PAGE_MAX,
    HANDED_ON,
    ApprovalDecision,
    ApprovalRequest,
    DecisionOutcome,
)
from models.errors import ErrorCode, QuartermasterError
from models.secret import Secret
from quartermaster.api.approval_facts import approval_facts, view_hash
from quartermaster.api.deps import HumanCaller, Services, require_human
from quartermaster.api.errors import ERROR_RESPONSES
from quartermaster.api.services import ApiServices

router = APIRouter(
    prefix="/v1/approvals",
    tags=["approvals"],
    dependencies=[Security(require_human)],
    responses=ERROR_RESPONSES,
)


async def pending_approval(
    svc: ApiServices, principal_id: str, approval_id: str, *, read_model: bool = False
) -> ApprovalRequest:
    """The open approval, if it is this principal's; else NOT_FOUND (whether or not it exists).

    `read_model` (a decision): look in the store's pending approvals first, an index lookup instead of
    a workflow query (a task the worker answers); the workflow's update validates the decision
    anyway. An approval without a row (older releases, no store) is asked of the workflow."""
    wid, sep, _kind = approval_id.rpartition(".")
    missing = QuartermasterError(
        ErrorCode.NOT_FOUND,
        f"no open approval {approval_id}: already decided, expired, its request ended, or not yours"
        " (qm inbox shows each code's status)",
    )
    if not sep or not wid or len(approval_id) > 300:
        raise missing
    if read_model and svc.orchestrator.pending is not None:
        # the row the notice wrote before the code was sent: its sealed request is the workflow's
        row = await svc.orchestrator.pending.open_one(approval_id)
        if row is not None:
            if row.principal_id == principal_id:
                return row
            raise missing
    try:
        pending: list[ApprovalRequest] = await svc.temporal.get_workflow_handle(wid).query(
            "pending_approvals", result_type=list[ApprovalRequest]
        )
    except RPCError:
        raise missing from None
    for a in pending:
        if a.approval_id == approval_id and a.principal_id == principal_id:
            return a
    raise missing


#: the response header carrying the cursor of the next page (absent on the last page)
NEXT_CURSOR_HEADER = "X-QM-Next-Cursor"


@router.get(
    "",
    response_model=list[ApprovalRequest],
    responses={
        200: {
            "headers": {
                NEXT_CURSOR_HEADER: {
                    "description": "pass as `cursor` for the next page; absent on the last page",
                    "schema": {"type": "string"},
                }
            }
        }
    },
)
async def list_approvals(
    caller: HumanCaller,
    svc: Services,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=APPROVALS_PAGE_MAX)] = 100,
) -> Response:
    """The approvals waiting for you, oldest first, one page at a time (`cursor` from the
    `X-QM-Next-Cursor` header of the previous page)."""
    page = await svc.orchestrator.approvals_page(caller.principal_id, cursor=cursor, limit=limit)
    headers = {NEXT_CURSOR_HEADER: page.next_cursor} if page.next_cursor is not None else None
    # the store validated every row into an ApprovalRequest: serialized once, not validated again
    return Response(APPROVAL_PAGE.dump_json(page.items), media_type="application/json", headers=headers)


@router.get("/{approval_id}", response_model=ApprovalView)
async def get_approval(approval_id: str, caller: HumanCaller, svc: Services) -> ApprovalView:
    """One pending approval with its details (e.g. the Checkout or OAuth consent URL) and the
    `view_hash` of what it is about; send that hash with the decision to bind it."""
    approval = await pending_approval(svc, caller.principal_id, approval_id)
    facts = await approval_facts(svc, approval, caller.email)
    return ApprovalView(**approval.model_dump(), view_hash=view_hash(facts))


@router.post("/{approval_id}/decision", response_model=DecisionOutcome)
async def decide(approval_id: str, body: DecisionBody, caller: HumanCaller, svc: Services) -> DecisionOutcome:
    """Approve or deny with the one-time code you received; anything but ACCEPTED is 409."""
    approval = await pending_approval(svc, caller.principal_id, approval_id, read_model=True)
    if body.decision == "approve" and approval.kind in HANDED_ON:
        # a code cannot add a card or consent at the provider: approving it would end the request
        key, label = HANDED_ON[approval.kind]
        raise QuartermasterError(
            ErrorCode.APPROVAL_HANDED_ON,
            f"{label}: {approval.details.get(key, '(see the approval page)')} (the request goes on by itself"
            " once that is done; nothing was decided)",
        )
    if body.view_hash is not None:
        if body.view_hash != view_hash(await approval_facts(svc, approval, caller.email)):
            raise QuartermasterError(
                ErrorCode.APPROVAL_CHANGED, f"{approval_id} changed since it was shown: review it again"
            )
    outcome = await svc.orchestrator.decide(
        ApprovalDecision(
            approval_id=approval_id,
            decision=body.decision,
            code=Secret(body.code),
            reason=body.reason,
            information=body.information,
            raise_limit_to=body.raise_limit_to,
        ),
        caller=f"human:{caller.principal_id}",
    )
    if outcome.status != "ACCEPTED":
        left = f" ({outcome.tries_left} tries left)" if outcome.status == "WRONG_CODE" else ""
        raise QuartermasterError(ErrorCode.APPROVAL_REJECTED, f"{outcome.status} for {approval_id}{left}")
    if approval.kind == "agent_unfreeze" and body.decision == "approve":
        agent = approval.workflow_id.removeprefix(f"agent-{caller.principal_id}-")
        await svc.logins.set_frozen(caller.principal_id, agent, False)
    return outcome
