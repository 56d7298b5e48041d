"""Who may see which object. Another principal's object is NOT_FOUND, never FORBIDDEN: the answer must
not reveal that it exists. An agent sees only what was done under its own session or a session
delegated from it (its session tree)."""

from __future__ import annotations

from models.errors import ErrorCode, QuartermasterError
from quartermaster.api.deps import Agent, Caller
from quartermaster.api.services import ApiServices
from quartermaster.orchestration.requests import RequestOwner


async def in_session_tree(svc: ApiServices, agent: Agent, session_id: str | None) -> bool:
    """True when `session_id` is the agent's session or one delegated (transitively) from it."""
    if session_id is None:
        return False
    if session_id == agent.session_id:
        return True
    state = await svc.presentations.session_state(session_id)
    return state is not None and agent.session_id in state.ancestors


async def may_see(svc: ApiServices, caller: Caller, owner: RequestOwner | None) -> bool:
    if svc.authorization_disabled:  # the deliberately broken variant the attacker suite must catch
        return owner is not None
    if owner is None or owner.principal_id != caller.principal_id:
        return False
    if isinstance(caller, Agent):
        return await in_session_tree(svc, caller, owner.session_id)
    return True


async def require_visible(svc: ApiServices, caller: Caller, owner: RequestOwner | None, what: str) -> None:
    if not await may_see(svc, caller, owner):
        raise QuartermasterError(ErrorCode.NOT_FOUND, f"no {what}")
