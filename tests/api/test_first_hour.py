"""Defects a newcomer met in the first hour (issue 20), each shown fixed through the API: a session
for an unknown provider is refused and nothing is opened; the dev inbox marks each code open, closed
or expired; an approval that is no longer open says why it cannot be found."""

from __future__ import annotations

import asyncio

import pytest

from models.money import Money
from tests.fixtures.stack import Stack, new_email


async def test_a_session_for_an_unknown_provider_is_refused(stack: Stack) -> None:
    email = new_email()
    async with await stack.login(email) as human:
        with pytest.raises(Exception, match="UNKNOWN_PROVIDER") as err:
            await human.sessions.open(
                agent="planner",
                allowed_services=["cloud/*", "nope/*"],
                budget=Money(amount=100, currency="usd"),
            )
        assert "'nope'" in str(err.value)
        assert await human.sessions.list(all=True) == []  # nothing was opened


async def test_the_inbox_marks_open_and_closed_codes(stack: Stack) -> None:
    email = new_email()
    async with await stack.login(email) as human:
        view = await human.provisions.create(service_id="cloud/workers", name="inbox-1", wait=20)
        (waiting,) = view.waiting_for
        inbox = await human.dev.inbox(email)
        (msg,) = [m for m in inbox if m.get("approval_id") == waiting.approval_id]
        assert msg["status"] == "open"
        assert {m["status"] for m in inbox if m.get("type") == "login_code"} == {"valid"}
        await human.approvals.decide(waiting.approval_id, decision="approve", code=msg["code"])
        for _ in range(100):
            inbox = await human.dev.inbox(email)
            (msg,) = [m for m in inbox if m.get("approval_id") == waiting.approval_id]
            if msg["status"] == "closed":
                break
            await asyncio.sleep(0.1)
        assert msg["status"] == "closed", msg
        with pytest.raises(Exception, match="already decided, expired") as err:
            await human.approvals.decide(waiting.approval_id, decision="approve", code=msg["code"])
        assert "NOT_FOUND" in str(err.value)
