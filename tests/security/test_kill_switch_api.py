"""The kill switch and revocation through the API: from the moment the human acts, the agent's tokens
are refused on every route; resetting the workflows (what a leaked namespace credential could do)
brings nothing back, because the API refuses from its own store."""

from __future__ import annotations

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
