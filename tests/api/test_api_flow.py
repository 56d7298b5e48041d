"""The API end to end, as its callers use it: a human logs in and provisions for themselves; an agent
under a session provisions, follows, rotates and removes; everything over real HTTP on loopback."""

from __future__ import annotations

import os

from models.money import Money
from tests.fixtures.stack import Stack, new_email


async def test_human_provisions_a_free_service_for_themselves(stack: Stack) -> None:
    email = new_email()
    async with await stack.login(email) as human:
        me = await human.auth.whoami()
        assert me.kind == "human" and me.email == email
        view = await human.provisions.create(
            service_id="cloud/workers", name="w1", request_id="tour-1", wait=20
        )
        view = await human.provisions.wait(view.request_id, timeout=30)
        if view.state == "waiting_for_human":  # a new principal accepts the provider's terms first
            (approval,) = view.waiting_for
            assert approval.kind == "terms"
            await human.approvals.decide(
                approval.approval_id, decision="approve", code=stack.code_for(approval.approval_id, email)
            )
            view = await human.provisions.wait("tour-1", timeout=30)
        assert view.state == "completed", view
        assert view.credential is not None and view.credential.names
        listed = await human.resources.list()
        assert [r.resource_id for r in listed] == [view.resource_id]
        creds = await human.resources.credentials(view.resource_id or "")
        assert set(creds) == set(view.credential.names)
        # the provider introspects the credential as active
        state = await stack.provider_state("cloud")
        assert str(view.resource_id) in str(state)


async def test_agent_under_a_session(stack: Stack) -> None:
    email = new_email()
    async with await stack.login(email) as human:
        sid = await stack.open_session(
            human, email, "planner", allowed_services=["cloud/*"], budget=Money(amount=2000, currency="usd")
        )
        async with await stack.agent(human, "planner", sid) as agent:
            me = await agent.auth.whoami()
            assert me.kind == "agent" and me.agent == "planner" and me.session_id == sid
            view = await agent.provisions.create(service_id="cloud/workers", name="a1", wait=20)
            if view.state == "waiting_for_human":
                w = view.waiting_for[0]
                await human.approvals.decide(
                    w.approval_id, decision="approve", code=stack.code_for(w.approval_id, email)
                )
            view = await agent.provisions.wait(view.request_id, timeout=30)
            assert view.state == "completed", view
            rid = view.resource_id or ""
            assert [r.resource_id for r in await agent.resources.list()] == [rid]
            rotated = await agent.resources.rotate(rid)
            assert rotated.outcome == "completed" and rotated.credential is not None
            removed = await agent.resources.remove(rid)
            assert removed.outcome == "completed"
            assert await agent.resources.list() == []
    assert "QM_SESSION_TOKEN" not in os.environ
