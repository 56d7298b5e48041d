"""The human's pending approvals through the API: the store's read model, paged, kept by the workflows
(a gate's notice opens the row, its close removes it from the list), one's own only."""

from __future__ import annotations

import asyncio

from quartermaster.client import QuartermasterClient
from tests.fixtures.stack import Stack, new_email


async def _until_listed(human: QuartermasterClient, want: int) -> list[str]:
    for _ in range(100):
        ids = [a.approval_id for a in await human.approvals.list()]
        if len(ids) == want:
            return ids
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {want} pending approvals, have {ids}")


async def test_pending_approvals_are_paged_and_leave_the_list_when_decided(stack: Stack) -> None:
    email = new_email()
    async with await stack.login(email) as human:
        views = [
            await human.provisions.create(service_id=s, name=f"p{i}", request_id=f"list-{i}", wait=20)
            for i, s in enumerate(("cloud/workers", "mail/send:starter", "db/postgres:free"))
        ]
        assert [v.state for v in views] == ["waiting_for_human"] * 3, views
        told = sorted(v.waiting_for[0].approval_id for v in views)
        assert sorted(await _until_listed(human, 3)) == told
        # one at a time: three pages, each with the next page's cursor, the last without
        first, cursor = await human.approvals.page(limit=1)
        second, cursor2 = await human.approvals.page(cursor=cursor, limit=1)
        third, last = await human.approvals.page(cursor=cursor2, limit=1)
        assert cursor and cursor2 and last is None
        assert sorted(a.approval_id for a in first + second + third) == told
        # the human-only details are the human's to see
        terms = next(a for a in first + second + third if a.kind == "terms")
        assert terms.details["tos_url"].startswith("http")
        # another human sees none of them
        async with await stack.login(new_email()) as other:
            assert await other.approvals.list() == []
            assert await other.approvals.page(cursor=cursor) == ([], None)
        # deciding one takes it off the list (the gate's close_approval activity)
        decided = views[0].waiting_for[0].approval_id
        await human.approvals.decide(decided, decision="approve", code=stack.code_for(decided, email))
        left = await _until_listed(human, 2)
        assert decided not in left
