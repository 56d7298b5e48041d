"""The kill switch: a human freezes one of their agents (at once) or asks to unfreeze it (approval).

The API records the freeze in its own store and refuses a frozen agent on every call, so resetting the
agent's workflow cannot undo it."""

from __future__ import annotations

from fastapi import APIRouter, Security

from models.api import FreezeBody
from models.request import AgentName
from models.session import AgentStatus, FreezeResult
from quartermaster.api.deps import HumanCaller, Services, require_human
from quartermaster.api.errors import ERROR_RESPONSES

router = APIRouter(
    prefix="/v1/agents",
    tags=["agents"],
    dependencies=[Security(require_human)],
    responses=ERROR_RESPONSES,
)


@router.get("/{name}", response_model=AgentStatus)
async def show_agent(name: AgentName, caller: HumanCaller, svc: Services) -> AgentStatus:
    status = await svc.sessions.agent_status(name, email=caller.email)
    if await svc.logins.frozen(caller.principal_id, [name]):
        status.frozen = True
    return status


@router.post("/{name}/freeze", response_model=FreezeResult)
async def freeze(name: AgentName, body: FreezeBody, caller: HumanCaller, svc: Services) -> FreezeResult:
    """Block the agent now and revoke every session and credential it holds."""
    await svc.logins.set_frozen(caller.principal_id, name, True)  # first: refused from this instant
    return await svc.sessions.freeze(name, email=caller.email, reason=body.reason)


@router.post("/{name}/unfreeze", response_model=AgentStatus, status_code=202)
async def unfreeze(name: AgentName, body: FreezeBody, caller: HumanCaller, svc: Services) -> AgentStatus:
    """Ask for an unfreeze; it takes effect when you approve it with the code you receive."""
    return await svc.sessions.unfreeze(name, email=caller.email, reason=body.reason)
