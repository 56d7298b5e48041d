"""An agent under a session tries to set or raise its own limits through the API: its monthly limit,
its per-purchase maximum and its purchases per hour, for itself and for every agent. Each attempt is
refused (403 FORBIDDEN) and the principal's limits stay what the human set. Against a deliberately
broken API (the human-only check lets the agent through) the same attempts report breaches, so the
test can fail; even then the change waits for the human's code, which the agent cannot give.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends

from activities.spend import SpendActivities
from models.limits import AgentLimits
from quartermaster.api.app import create_app
from quartermaster.api.deps import Caller, Human, require_caller, require_human
from quartermaster.crypto.authority import AuthoritySigner
from tests.fixtures.servers import serve_asgi
from tests.fixtures.stack import Stack, new_email

BODIES: list[dict[str, Any]] = [
    {"kind": "agent_monthly", "agent": "planner", "limit": {"amount": 100_000_000, "currency": "usd"}},
    {"kind": "agent_monthly", "limit": {"amount": 100_000_000, "currency": "usd"}},
    {"kind": "per_transaction", "agent": "planner", "limit": {"amount": 100_000_000, "currency": "usd"}},
    {"kind": "velocity", "agent": "planner", "purchases_per_hour": 10_000},
    {"kind": "velocity", "purchases_per_hour": 10_000},
]


async def _attack(api_url: str, agent_headers: dict[str, str]) -> list[str]:
    """Every body as the agent; the breaches (an answer other than 403 FORBIDDEN)."""
    breaches = []
    async with httpx.AsyncClient(base_url=api_url) as http:
        for body in BODIES:
            r = await http.post("/v1/billing/limits", json=body, headers=agent_headers)
            code = r.json().get("error", {}).get("code") if r.status_code >= 400 else None
            if (r.status_code, code) != (403, "FORBIDDEN"):
                breaches.append(f"{body}: {r.status_code} {r.text[:200]}")
                if r.status_code == 202:  # it waits for the human's code, which the agent does not hold
                    decision = {"decision": "approve", "code": "AAAAA-AAAAA"}
                    d = await http.post(
                        f"/v1/approvals/{r.json()['approval_id']}/decision",
                        json=decision,
                        headers=agent_headers,
                    )
                    # refused, a wrong code, or not open yet: never approved
                    assert d.status_code in (403, 404, 409), d.text
    return breaches


@contextmanager
def _broken_api(stack: Stack) -> Iterator[str]:
    """WRONG ON PURPOSE: the API's human-only dependency accepts an agent as its principal."""
    app = create_app(stack.api, dev_routes=False)

    async def anyone_is_human(caller: Annotated[Caller, Depends(require_caller)]) -> Human:
        if isinstance(caller, Human):
            return caller
        return Human(principal_id=caller.principal_id, email=caller.email)

    app.dependency_overrides[require_human] = anyone_is_human
    with serve_asgi(app) as url:
        yield url


async def _setup(stack: Stack) -> tuple[str, dict[str, str], SpendActivities]:
    email = new_email()
    human = await stack.login(email)
    sid = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
    agent = await stack.agent(human, "planner", sid)
    headers = agent._headers()
    await agent.aclose()
    await human.aclose()
    spend = SpendActivities(
        stack.client, stack.settings.task_queue, authority=AuthoritySigner.from_keyring(stack.keyring)
    )
    return stack.principal_id(email), headers, spend


async def test_an_agent_cannot_set_or_raise_its_limits(stack: Stack) -> None:
    principal, headers, spend = await _setup(stack)
    assert await _attack(stack.api_url, headers) == []
    limits = await spend.principal_limits(principal)
    assert (limits.for_agent("planner"), limits.version) == (AgentLimits(), 0)


async def test_the_test_catches_an_api_that_lets_agents_set_limits(stack: Stack) -> None:
    principal, headers, spend = await _setup(stack)
    with _broken_api(stack) as url:
        breaches = await _attack(url, headers)
    assert len(breaches) == len(BODIES), breaches
    # the approval gate still stands: nothing applied without the human's code
    limits = await spend.principal_limits(principal)
    assert (limits.for_agent("planner"), limits.version) == (AgentLimits(), 0)
