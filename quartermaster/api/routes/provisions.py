"""Provisioning requests: start one, follow it. A request belongs to the verified principal (request ids
are scoped to them) and, for an agent, to its session tree."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, Security

from models.api import CredentialRef, ProvisionBody, ProvisionView, WaitingFor
from models.errors import ErrorCode, QuartermasterError
from models.provisioning import ProvisionResult, ProvisionStatus
from models.request import ProvisionRequest
from quartermaster.api.deps import AnyCaller, Caller, Services, actor_of, require_caller
from quartermaster.api.errors import ERROR_RESPONSES
from quartermaster.api.ownership import may_see, require_visible
from quartermaster.api.services import ApiServices
from quartermaster.orchestration.requests import Waiting, workflow_id_for

router = APIRouter(
    prefix="/v1/provisions",
    tags=["provisions"],
    dependencies=[Security(require_caller)],
    responses=ERROR_RESPONSES,
)
MAX_WAIT_SECONDS = 30


def view_of(st: ProvisionResult | Waiting | ProvisionStatus, request_id: str) -> ProvisionView:
    """What the caller sees: credential names, never values; what the human must do, never how."""
    if isinstance(st, ProvisionResult):
        cred = st.credential
        return ProvisionView(
            request_id=request_id,
            state=st.outcome,
            service_id=st.service_id,
            resource_id=st.resource_id,
            resource_status=st.resource_status,
            link_action=st.link_action,
            charge=st.charge.amount if st.charge else None,
            credential=CredentialRef(
                credential_id=cred.credential_id,
                names=sorted(cred.env),
                expires_at=cred.expires_at,
                scopes=cred.scopes,
            )
            if cred
            else None,
            error={"code": st.error_code or "UNKNOWN_ERROR", "message": st.error_message or ""}
            if st.outcome != "completed"
            else None,
            compensations=st.compensations,
        )
    if isinstance(st, Waiting):
        first = st.approvals[0]
        return ProvisionView(
            request_id=request_id,
            state="waiting_for_human",
            step=first.kind,
            error={"code": str(st.code), "message": first.summary},
            waiting_for=[
                WaitingFor(approval_id=a.approval_id, kind=a.kind, summary=a.summary, expires_at=a.expires_at)
                for a in st.approvals
            ],
        )
    return ProvisionView(request_id=request_id, state="running", step=st.step, resource_id=st.resource_id)


def _status_code(view: ProvisionView) -> int:
    return 200 if view.state in ("completed", "undone", "rejected") else 202


async def _follow(
    svc: ApiServices, caller: Caller, request_id: str, wait: float, *, visible: bool = False
) -> ProvisionView:
    """`visible`: the caller is known to see the request (it just started it, or its owner was
    checked), so it is not described again."""
    if not visible:
        wid = workflow_id_for(request_id, caller.principal_id)
        await require_visible(svc, caller, await svc.orchestrator.owner(wid), f"request {request_id}")
    st = await svc.orchestrator.wait(request_id, min(wait, MAX_WAIT_SECONDS), caller.principal_id)
    return view_of(st, request_id)


@router.post("", response_model=ProvisionView, status_code=202)
async def create_provision(
    body: ProvisionBody,
    caller: AnyCaller,
    svc: Services,
    response: Response,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0,
) -> ProvisionView:
    """Start (or find, by `request_id`) a provisioning for the caller. 202 while it runs or waits for a
    human; 200 once it is completed or undone. The same request id with other parameters is 409."""
    request_id = body.request_id or uuid.uuid4().hex[:16]
    req = ProvisionRequest(
        request_id=request_id,
        service_id=body.service_id,
        name=body.name,
        configuration=body.configuration,
        max_price=body.max_price,
        budget=body.budget,
        scopes=body.scopes,
        credential_ttl_seconds=body.credential_ttl_seconds,
        actor=actor_of(caller),
    )
    # start first: a new request id costs no describe; a taken one is described once, by the start
    _, existing = await svc.orchestrator.start(req, principal_id=caller.principal_id)
    if existing is not None:
        if not await may_see(svc, caller, existing):
            # the same principal's request from another session: never show it across sessions
            raise QuartermasterError(
                ErrorCode.IDEMPOTENCY_CONFLICT, f"request id {request_id} is already in use"
            )
        svc.orchestrator.check_reuse(req, existing)
    view = await _follow(svc, caller, request_id, wait, visible=True)
    response.status_code = _status_code(view)
    return view


@router.get("/{request_id}", response_model=ProvisionView)
async def get_provision(
    request_id: str,
    caller: AnyCaller,
    svc: Services,
    response: Response,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0,
) -> ProvisionView:
    """A request's state; with `wait`, return as soon as it finishes or waits for a human."""
    view = await _follow(svc, caller, request_id, wait)
    response.status_code = _status_code(view)
    return view
