"""The kill switch and revocation through the API: from the moment the human acts, the agent's tokens
are refused on every route; resetting the workflows (what a leaked namespace credential could do)
brings nothing back, because the API refuses from its own store."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest

from quartermaster.client import ApiError
from tests.fixtures.stack import Stack, new_email


async def _reset_to_start(stack: Stack, workflow_id: str) -> None:
    """Reset the workflow to its first workflow task: every later event (the freeze, the revoke) is gone."""
    handle = stack.client.get_workflow_handle(workflow_id)
    events = [e async for e in handle.fetch_history_events()]
    first_task = next(e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
    await stack.client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=stack.client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id),
            reason="attacker with a namespace credential",
            workflow_task_finish_event_id=first_task.event_id,
            request_id=uuid.uuid4().hex,
        )
    )


async def test_freeze_refuses_the_agent_even_after_a_workflow_reset(stack: Stack) -> None:
    email = new_email()
    async with await stack.login(email) as human:
        sid = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
        agent = await stack.agent(human, "planner", sid)
        assert (await agent.auth.whoami()).kind == "agent"
        frozen = await human.agents.freeze("planner")
        assert frozen.frozen
        with pytest.raises(ApiError) as refused:
            await agent.resources.list()
        assert refused.value.code == "AGENT_FROZEN" and refused.value.status == 403
        await _reset_to_start(stack, f"agent-{stack.principal_id(email)}-planner")
        with pytest.raises(ApiError) as still:
            await agent.resources.list()
        assert still.value.code in ("AGENT_FROZEN", "SESSION_REVOKED")
        assert (await human.agents.show("planner")).frozen
        # nor can a new process be attested for the frozen agent
        with pytest.raises(ApiError) as attest:
            await stack.agent(human, "planner", sid)
        assert attest.value.code in ("AGENT_FROZEN", "SESSION_REVOKED", "SESSION_INVALID")
        await agent.aclose()


async def test_revoked_session_stays_revoked_after_a_workflow_reset(stack: Stack) -> None:
    email = new_email()
    async with await stack.login(email) as human:
        sid = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
        agent = await stack.agent(human, "planner", sid)
        assert (await agent.auth.whoami()).session_id == sid  # the API now holds it as active
        summary = await human.sessions.revoke(sid)
        assert summary.status == "revoked"
        with pytest.raises(ApiError) as refused:
            await agent.resources.list()
        assert refused.value.code == "SESSION_REVOKED" and refused.value.status == 401
        await _reset_to_start(stack, f"session-{sid}")
        with pytest.raises(ApiError) as still:
            await agent.provisions.create(service_id="cloud/workers", name="after")
        assert still.value.code == "SESSION_REVOKED"
        await agent.aclose()


async def test_freeze_stays_within_the_principal(stack: Stack) -> None:
    """Two principals each run an agent named "planner": Bob's kill switch leaves Alice's untouched."""
    alice, bob = new_email(), new_email()
    async with await stack.login(alice) as a_human, await stack.login(bob) as b_human:
        a_sid = await stack.open_session(a_human, alice, "planner", allowed_services=["cloud/*"])
        b_sid = await stack.open_session(b_human, bob, "planner", allowed_services=["cloud/*"])
        a_agent = await stack.agent(a_human, "planner", a_sid)
        await b_human.agents.freeze("planner")
        assert (await b_human.sessions.get(b_sid)).status == "revoked"
        assert (await a_human.sessions.get(a_sid)).status == "active"
        assert (await a_agent.auth.whoami()).session_id == a_sid
        assert not (await a_human.agents.show("planner")).frozen
        await a_agent.aclose()


async def _refused_after_unfreeze(stack: Stack, window: float) -> list[str]:
    """Freeze an agent (the API reads its refusal once), unfreeze it, and call with a new session for `window`
    seconds: the refusal codes seen before the first call that passed (all of them if none did)."""
    email = new_email()
    async with await stack.login(email) as human:
        sid = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
        agent = await stack.agent(human, "planner", sid)
        await human.agents.freeze("planner")  # before the agent's first call: its refusal is a fresh read
        with pytest.raises(ApiError) as refused:
            await agent.resources.list()
        assert refused.value.code == "AGENT_FROZEN"  # the frozen agent, read once
        await agent.aclose()
        status = await human.agents.unfreeze("planner")
        approval = status.unfreeze_approval_id
        assert approval is not None
        for _ in range(100):
            if any(m.get("approval_id") == approval for m in stack.inbox(email)):
                break
            await asyncio.sleep(0.05)
        await human.approvals.decide(approval, decision="approve", code=stack.code_for(approval, email))
        for _ in range(200):
            if not (await human.agents.show("planner")).frozen:
                break
            await asyncio.sleep(0.05)
        sid2 = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
        again = await stack.agent(human, "planner", sid2)
        codes: list[str] = []
        deadline = asyncio.get_running_loop().time() + window
        try:
            while asyncio.get_running_loop().time() < deadline:
                try:
                    await again.auth.whoami()
                    return codes
                except ApiError as err:
                    codes.append(err.code)
                await asyncio.sleep(0.1)
            return codes or ["none"]
        finally:
            await again.aclose()


async def test_an_unfrozen_agent_is_let_in_at_once(stack: Stack) -> None:
    """The API reuses an agent's state between calls (`ENTITY_TTL_SECONDS`, 30 s) but only a good
    answer: once the human's unfreeze applies, the agent's next call with a new session passes."""
    assert await _refused_after_unfreeze(stack, window=5.0) == []


async def test_the_unfreeze_check_catches_a_cache_that_keeps_refusals(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BROKEN ON PURPOSE: an API cache that also keeps a frozen agent's status refuses it for its TTL."""
    import activities.sessions

    monkeypatch.setattr(activities.sessions, "_not_frozen", lambda _status: True)
    codes = await _refused_after_unfreeze(stack, window=5.0)
    assert codes and set(codes) == {"AGENT_FROZEN"}, codes
