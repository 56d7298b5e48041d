"""Provisioned resources: list, show, reveal credentials (for `qm exec`), rotate, remove. An agent sees
only resources provisioned under its session tree; a human sees all of theirs."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, Security

from models.api import CredentialRef, ResourceAction, ResourceInfo
from models.errors import ErrorCode, QuartermasterError
from models.plan_change import Direction, PlanChangeBody, PlanChangeQuote, PlanChangeView
from models.provisioning import ResourceActionResult
from quartermaster.api.deps import Agent, AnyCaller, Caller, Services, actor_of, require_caller
from quartermaster.api.errors import ERROR_RESPONSES
from quartermaster.api.ownership import require_visible
from quartermaster.api.services import ApiServices
from quartermaster.orchestration.plan_changes import change_plan, plan_quote

router = APIRouter(
    prefix="/v1/resources",
    tags=["resources"],
    dependencies=[Security(require_caller)],
    responses=ERROR_RESPONSES,
)


async def session_tree(svc: ApiServices, agent: Agent) -> set[str]:
    """The agent's session and every session delegated from it."""
    seen: set[str] = set()
    todo = [agent.session_id]
    while todo and len(seen) < 1000:
        sid = todo.pop()
        if sid in seen:
            continue
        seen.add(sid)
        state = await svc.presentations.session_state(sid)
        if state is not None:
            todo.extend(state.children)
    return seen


async def _visible_resource(svc: ApiServices, caller: Caller, resource_id: str) -> None:
    await require_visible(
        svc, caller, await svc.orchestrator.resource_owner(resource_id), f"resource {resource_id}"
    )


def _action(res: ResourceActionResult) -> ResourceAction:
    cred = res.credential
    return ResourceAction(
        resource_id=res.resource_id,
        outcome=res.outcome,
        credential=CredentialRef(
            credential_id=cred.credential_id,
            names=sorted(cred.env),
            expires_at=cred.expires_at,
            scopes=cred.scopes,
        )
        if cred is not None
        else None,
        error={"code": res.error_code or "UNKNOWN_ERROR", "message": res.error_message or ""}
        if res.outcome != "completed"
        else None,
    )


@router.get("", response_model=list[ResourceInfo])
async def list_resources(caller: AnyCaller, svc: Services) -> list[ResourceInfo]:
    """Live resources you may use, with their credentials' names (never values)."""
    sessions = await session_tree(svc, caller) if isinstance(caller, Agent) else None
    if svc.authorization_disabled:
        return await svc.orchestrator.resources()
    return await svc.orchestrator.resources(principal_id=caller.principal_id, sessions=sessions)


@router.get("/{resource_id}", response_model=ResourceInfo)
async def show_resource(resource_id: str, caller: AnyCaller, svc: Services) -> ResourceInfo:
    await _visible_resource(svc, caller, resource_id)
    for info in await svc.orchestrator.resources(principal_id=caller.principal_id):
        if info.resource_id == resource_id:
            return info
    raise QuartermasterError(ErrorCode.NOT_FOUND, f"no resource {resource_id}")


@router.get("/{resource_id}/credentials", response_model=dict[str, str])
async def reveal_credentials(resource_id: str, caller: AnyCaller, svc: Services) -> dict[str, str]:
    """The current credential's values, for `qm exec` to put in a child's environment. Never give this
    route's answer to a model: MCP tools return references only."""
    await _visible_resource(svc, caller, resource_id)
    creds = await svc.orchestrator.credentials(resource_id)
    return {name: secret.reveal() for name, secret in creds.items()}


@router.post("/{resource_id}/rotate", response_model=ResourceAction)
async def rotate(resource_id: str, caller: AnyCaller, svc: Services) -> ResourceAction:
    """Mint a new credential and revoke the old one."""
    await _visible_resource(svc, caller, resource_id)
    res = await svc.orchestrator.rotate(resource_id, actor_of(caller), uuid.uuid4().hex[:12])
    return _action(res)


@router.post("/{resource_id}/plan/quote", response_model=PlanChangeQuote)
async def quote_plan_change(
    resource_id: str, body: PlanChangeBody, caller: AnyCaller, svc: Services
) -> PlanChangeQuote:
    """What moving to `to_service_id` costs: the prorated difference now, the new price after."""
    await _visible_resource(svc, caller, resource_id)
    return await plan_quote(svc.orchestrator, resource_id, body.to_service_id)


async def _plan(
    resource_id: str,
    body: PlanChangeBody,
    caller: Caller,
    svc: ApiServices,
    direction: Direction,
    response: Response,
) -> PlanChangeView:
    await _visible_resource(svc, caller, resource_id)
    view = await change_plan(svc.orchestrator, resource_id, body, actor_of(caller), direction)
    if view.state in ("awaiting_approval", "running"):
        response.status_code = 202  # waiting for the human (or still working): the change's state
    return view


@router.post("/{resource_id}/upgrade", response_model=PlanChangeView)
async def upgrade(
    resource_id: str, body: PlanChangeBody, caller: AnyCaller, svc: Services, response: Response
) -> PlanChangeView:
    """Move to a dearer service of the catalog's `allowed_updates`; the prorated difference is charged
    now, after the human approves it (202 with the approval id while it waits)."""
    return await _plan(resource_id, body, caller, svc, "upgrade", response)


@router.post("/{resource_id}/downgrade", response_model=PlanChangeView)
async def downgrade(
    resource_id: str, body: PlanChangeBody, caller: AnyCaller, svc: Services, response: Response
) -> PlanChangeView:
    """Move to a cheaper allowed service; the unused difference is taken off the next renewal."""
    return await _plan(resource_id, body, caller, svc, "downgrade", response)


@router.delete("/{resource_id}", response_model=ResourceAction)
async def remove(resource_id: str, caller: AnyCaller, svc: Services) -> ResourceAction:
    """Remove the resource at its provider and revoke its credentials."""
    await _visible_resource(svc, caller, resource_id)
    return _action(await svc.orchestrator.remove(resource_id, actor_of(caller)))
