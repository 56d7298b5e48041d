"""A verifier reads a session's and an agent's live facts with a describe (the memo and search attribute
the entities keep in step with their state), not a query: revocation and freezes are still seen at once.
Each guarantee is also run against a deliberately broken verifier, to show the test catches it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from activities.sessions import SessionActivities
from models.errors import ErrorCode
from models.secret import Secret
from models.session import AgentStatus, Authorization, SessionState
from tests.fixtures.sessions import IdentityStack
from tests.test_session_refusals import authorize

EMAIL = "live-reads@example.com"


@contextmanager
def counted_queries(stack: IdentityStack) -> Iterator[list[str]]:
    """Every session query the verifier makes (the describe path makes none once it knows the session)."""
    seen: list[str] = []
    real = stack.sessions.session_state

    async def counting(session_id: str) -> SessionState | None:
        seen.append(session_id)
        return await real(session_id)

    stack.sessions.session_state = counting  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del stack.sessions.session_state


@contextmanager
def broken(stack: IdentityStack, name: str, fn: Any) -> Iterator[None]:
    setattr(stack.sessions, name, fn.__get__(stack.sessions, SessionActivities))
    try:
        yield
    finally:
        delattr(stack.sessions, name)


async def _trust_cache(self: SessionActivities, session_id: str) -> SessionState | None:
    """Broken: the state seen once is believed from then on (no live status)."""
    fixed = self._fixed.get(session_id)
    return fixed[1] if fixed is not None else await SessionActivities.live_session(self, session_id)


async def _never_frozen(self: SessionActivities, principal_id: str, agent: str) -> Any:
    """Broken: the agent entity is never asked."""
    return AgentStatus(agent=agent)


async def ask(stack: IdentityStack, agent: str, token: Secret) -> Authorization:
    """The worker's authorization of this agent's session, with a fresh identity token."""
    return await authorize(stack, agent, token, stack.identity(agent), email=EMAIL)


@pytest.mark.parametrize("variant", ["real", "broken"])
async def test_revocation_is_seen_through_the_describe_path(
    identity_stack: IdentityStack, variant: str
) -> None:
    stack = identity_stack
    agent = f"live-{variant}"
    state, token = await stack.open_root(agent, email=EMAIL)
    assert (await ask(stack, agent, token)).allowed  # first sight: one query
    with counted_queries(stack) as queries:
        assert (await ask(stack, agent, token)).allowed
    assert queries == [], "a known active session is verified without a query"
    await stack.qm.revoke(state.session_id, by="test", reason="revoked in the test")
    if variant == "broken":
        with broken(stack, "live_session", _trust_cache):
            auth = await ask(stack, agent, token)
        assert auth.allowed, "the broken verifier misses the revocation: the test can tell"
        return
    auth = await ask(stack, agent, token)
    assert (auth.allowed, auth.code) == (False, ErrorCode.SESSION_REVOKED)


@pytest.mark.parametrize("variant", ["real", "broken"])
async def test_a_freeze_is_seen_through_the_describe_path(
    identity_stack: IdentityStack, variant: str
) -> None:
    stack = identity_stack
    agent = f"frozen-live-{variant}"
    _, token = await stack.open_root(agent, email=EMAIL)
    assert (await ask(stack, agent, token)).allowed
    assert (await ask(stack, agent, token)).allowed
    await stack.qm.freeze(agent, email=EMAIL, reason="test kill switch")
    if variant == "broken":
        with broken(stack, "_agent_status", _never_frozen):
            auth = await ask(stack, agent, token)
        assert auth.code != ErrorCode.AGENT_FROZEN, "the broken verifier never sees the freeze itself"
        return
    auth = await ask(stack, agent, token)
    assert (auth.allowed, auth.code) == (False, ErrorCode.AGENT_FROZEN)


async def test_the_memo_says_what_the_query_says(identity_stack: IdentityStack) -> None:
    """The session's memo is written in the same workflow task as its state: a describe right after a
    change reads it (the raw facts a verifier relies on)."""
    stack = identity_stack
    state, _ = await stack.open_root("memo-check", email=EMAIL)
    handle = stack.client.get_workflow_handle(f"session-{state.session_id}")
    assert (await (await handle.describe()).memo())["live"] == {
        "status": "active",
        "near_credential_limit": False,
    }
    await stack.qm.revoke(state.session_id, by="test", reason="memo check")
    assert (await (await handle.describe()).memo())["live"]["status"] == "revoked"
