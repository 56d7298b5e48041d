"""Sessions: a human opens one for an agent (then approves it); an agent delegates a narrower one. Each
side sees only its own: a human their principal's sessions, an agent its session tree."""

from __future__ import annotations

from fastapi import APIRouter, Response, Security

from models.api import DelegateBody, RevokeBody, SessionOpenBody
from models.errors import ErrorCode, QuartermasterError
from models.session import CloseSummary, DelegationRequest, SessionState
from quartermaster.api.deps import (
    HUMAN_AGENT,
    Agent,
    AgentCaller,
    AnyCaller,
    HumanCaller,
    Services,
    require_caller,
)
from quartermaster.api.errors import ERROR_RESPONSES
from quartermaster.api.ownership import in_session_tree
from quartermaster.api.routes.resources import session_tree
from quartermaster.api.services import ApiServices

router = APIRouter(
    prefix="/v1/sessions",
    tags=["sessions"],
    dependencies=[Security(require_caller)],
    responses=ERROR_RESPONSES,
)


async def visible_session(
    svc: ApiServices, caller: HumanCaller | AgentCaller, session_id: str
) -> SessionState:
    missing = QuartermasterError(ErrorCode.NOT_FOUND, f"no session {session_id}")
    if not session_id.isalnum() or len(session_id) > 64:
        raise missing
    state = await svc.presentations.session_state(session_id)
    if state is None or state.principal_id != caller.principal_id:
        raise missing
    if isinstance(caller, Agent) and not await in_session_tree(svc, caller, session_id):
        raise missing
    return state


def known_providers(svc: ApiServices, patterns: list[str] | None) -> None:
    """A pattern naming a provider this API does not know grants nothing: refused, not kept."""
    for pattern in patterns or []:
        provider = pattern.partition("/")[0]
        if pattern != "*" and provider not in svc.settings.providers:
            raise QuartermasterError(
                ErrorCode.UNKNOWN_PROVIDER,
                f"no provider named {provider!r} (in {pattern!r}); known: "
                + ", ".join(sorted(svc.settings.providers)),
            )


@router.post("", response_model=SessionState, status_code=202)
async def open_session(body: SessionOpenBody, caller: HumanCaller, svc: Services) -> SessionState:
    """Ask to open a session for an agent: it is active once you approve it with the code you receive."""
    if body.agent == HUMAN_AGENT:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, f"{HUMAN_AGENT!r} is not an agent name")
    known_providers(svc, body.allowed_services)
    return await svc.sessions.open(
        email=caller.email,
        agent=body.agent,
        allowed_services=body.allowed_services,
        budget_minor=body.budget.amount,
        currency=body.budget.currency,
        ttl_seconds=body.ttl_seconds,
        max_depth=body.max_depth,
        allowed_scopes=body.allowed_scopes,
        approval_timeout_seconds=svc.settings.approval_timeout_seconds,
        trust_domain=svc.identity.trust_domain,
    )


@router.get("", response_model=list[SessionState])
async def list_sessions(caller: AnyCaller, svc: Services, all: bool = False) -> list[SessionState]:
    """Your sessions (a human: the principal's; an agent: its own and those delegated from it)."""
    if isinstance(caller, Agent):
        ids = sorted(await session_tree(svc, caller))
    else:
        ids = await svc.sessions.list(email=caller.email, running=not all)
    states = [await svc.presentations.session_state(i) for i in ids]
    return [s for s in states if s is not None and s.principal_id == caller.principal_id]


@router.post("/delegate", response_model=SessionState, status_code=201)
async def delegate(body: DelegateBody, caller: AgentCaller, svc: Services) -> SessionState:
    """Create a narrower session for a sub-agent; never wider than yours. Start the sub-agent with
    `qm run --agent TO --session ID`, which asks this API for its tokens."""
    result = await svc.sessions.delegate(
        DelegationRequest(
            session_token=caller.session_token,
            identity_token=caller.identity_token,
            to_agent=body.to_agent,
            allowed_services=body.allowed_services,
            budget=body.budget,
            ttl_seconds=body.ttl_seconds,
            max_depth=body.max_depth,
            allowed_scopes=body.allowed_scopes,
        )
    )
    return await svc.sessions.show(result.session_id)


@router.get("/{session_id}", response_model=SessionState)
async def show_session(session_id: str, caller: AnyCaller, svc: Services) -> SessionState:
    return await visible_session(svc, caller, session_id)


@router.post("/{session_id}/revoke", response_model=CloseSummary)
async def revoke_session(
    session_id: str, body: RevokeBody, caller: HumanCaller, svc: Services, response: Response
) -> CloseSummary:
    """Revoke a session, every session delegated from it, and their credentials at the providers."""
    await visible_session(svc, caller, session_id)
    await svc.logins.revoke_sessions([session_id])  # first: no agent call passes from now on
    summary = await svc.sessions.revoke(session_id, by=caller.principal_id, reason=body.reason)
    response.status_code = 200
    return summary
