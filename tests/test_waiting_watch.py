"""`WaitingWatch`: the API follows many requests with one look in the pending-approvals store per tick.

Run on the real SQLite store. Fifty followers, three of whose requests come to wait for a human: the
three return, the rest keep waiting, and the store was asked about once per tick, not once per
follower per tick. The broken variant (each follower looking on its own, the design this replaced)
is caught by the same count. Cancelling one follower leaves another of the same request following,
and a store failure reaches the followers instead of hanging them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from models.approval import ApprovalRequest
from providers.store import Store, open_store
from providers.store.interfaces import PendingApprovalStore
from quartermaster.orchestration.watch import WaitingWatch

TICK = 0.05


class CountingApprovals:
    """The real store's approvals, counting the looks (and able to fail on demand)."""

    def __init__(self, inner: PendingApprovalStore) -> None:
        self.inner = inner
        self.looks = 0
        self.fail = False

    async def waiting(self, workflow_id: str) -> bool:
        self.looks += 1
        return await self.inner.waiting(workflow_id)

    async def waiting_among(self, workflow_ids: Sequence[str]) -> set[str]:
        self.looks += 1
        if self.fail:
            raise RuntimeError("store down")
        return await self.inner.waiting_among(workflow_ids)


class PerFollowerWatch(WaitingWatch):
    """Broken variant: every follower polls the store on its own."""

    def __init__(self, pending: CountingApprovals) -> None:
        super().__init__(pending, tick_seconds=TICK)  # type: ignore[arg-type]
        self._counting = pending

    async def until_waiting(self, workflow_id: str) -> None:
        while not await self._counting.waiting(workflow_id):  # noqa: ASYNC110 - polls on purpose
            await asyncio.sleep(TICK)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = open_store(str(tmp_path / "quartermaster.sqlite"), sealer=_Sealer())
    yield opened
    opened.close()


class _Sealer:
    def seal(self, plaintext: str) -> str:
        return "sealed:" + plaintext

    def unseal(self, sealed: str) -> str:
        return sealed.removeprefix("sealed:")


def _approval(n: int) -> ApprovalRequest:
    at = datetime.now(UTC)
    return ApprovalRequest(
        approval_id=f"provision-dora-r{n}.terms",
        kind="terms",
        workflow_id=f"provision-dora-r{n}",
        principal_id="dora",
        summary="accept the terms",
        requested_at=at,
        expires_at=at + timedelta(hours=1),
    )


async def _fifty_followers(store: Store, watch: WaitingWatch) -> tuple[set[int], float]:
    """Returns which followers returned, and for how many ticks they were followed."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    followers = {n: asyncio.ensure_future(watch.until_waiting(f"provision-dora-r{n}")) for n in range(50)}
    await asyncio.sleep(4 * TICK)
    for n in (7, 21, 42):
        await store.approvals.open_approval(_approval(n))
    await asyncio.wait([followers[n] for n in (7, 21, 42)], timeout=10)
    await asyncio.sleep(2 * TICK)
    returned = {n for n, f in followers.items() if f.done()}
    for f in followers.values():
        f.cancel()
    await asyncio.gather(*followers.values(), return_exceptions=True)
    return returned, (loop.time() - t0) / TICK


async def test_fifty_followers_cost_one_look_per_tick(store: Store) -> None:
    counting = CountingApprovals(store.approvals)
    watch = WaitingWatch(counting, tick_seconds=TICK)  # type: ignore[arg-type]
    returned, ticks = await _fifty_followers(store, watch)
    assert returned == {7, 21, 42}
    assert counting.looks <= ticks + 2, (counting.looks, ticks)  # one look per tick, whatever the followers
    assert watch.following == 0  # nothing left behind


async def test_the_count_catches_followers_that_look_on_their_own(store: Store) -> None:
    counting = CountingApprovals(store.approvals)
    returned, ticks = await _fifty_followers(store, PerFollowerWatch(counting))
    assert returned == {7, 21, 42}
    assert counting.looks > ticks + 2, (counting.looks, ticks)  # the same bound fails


async def test_cancelling_one_follower_leaves_the_other(store: Store) -> None:
    watch = WaitingWatch(store.approvals, tick_seconds=TICK)
    first = asyncio.ensure_future(watch.until_waiting("provision-dora-r1"))
    second = asyncio.ensure_future(watch.until_waiting("provision-dora-r1"))
    await asyncio.sleep(2 * TICK)
    first.cancel()
    await store.approvals.open_approval(_approval(1))
    await asyncio.wait_for(second, 5)
    assert first.cancelled()
    assert watch.following == 0


async def test_a_store_failure_reaches_the_followers(store: Store) -> None:
    counting = CountingApprovals(store.approvals)
    counting.fail = True
    watch = WaitingWatch(counting, tick_seconds=TICK)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="store down"):
        await asyncio.wait_for(watch.until_waiting("provision-dora-r5"), 5)
    counting.fail = False
    follower = asyncio.ensure_future(watch.until_waiting("provision-dora-r5"))  # the watch recovers
    await store.approvals.open_approval(_approval(5))
    await asyncio.wait_for(follower, 5)
