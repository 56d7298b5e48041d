"""Following many requests at once: which of them now wait for a human, with one look per tick.

`POST /v1/provisions?wait=N` and `GET /v1/provisions/{id}?wait=N` answer when the request finished
(a long poll on its result, which Temporal's server answers) or when it waits for a human, which
only the pending-approvals read model knows without asking the worker. Each follower used to look
in the store itself every quarter second: at 50 requests in flight that was 200 store transactions
a second, each opening a SQLite connection. `WaitingWatch` keeps one set of followed workflow ids
per event loop and looks for all of them in one query per tick (`PendingApprovalStore.waiting_among`),
so the cost is per tick, not per follower (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from providers.store.interfaces import PendingApprovalStore

log = logging.getLogger(__name__)

#: how often the store is asked (the same cadence each follower used on its own)
TICK_SECONDS = 0.25


class WaitingWatch:
    """`until_waiting(wid)` returns once the workflow has an open approval; cancel it to stop."""

    def __init__(self, pending: PendingApprovalStore, *, tick_seconds: float = TICK_SECONDS) -> None:
        self._pending = pending
        self._tick = tick_seconds
        self._followers: dict[str, list[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def following(self) -> int:
        """How many workflows are followed now (for tests and metrics)."""
        return len(self._followers)

    async def until_waiting(self, workflow_id: str) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop (a test, a restarted server): start over on it
            self._followers, self._loop, self._task = {}, loop, None
        future: asyncio.Future[None] = loop.create_future()
        self._followers.setdefault(workflow_id, []).append(future)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="qm-waiting-watch")
        try:
            await future
        finally:
            left = self._followers.get(workflow_id)
            if left is not None and future in left:
                left.remove(future)
                if not left:
                    del self._followers[workflow_id]

    async def _run(self) -> None:
        """Look, resolve, sleep; stop when nobody follows anything (the next follower restarts it)."""
        while self._followers:
            ids = list(self._followers)
            try:
                found = await self._pending.waiting_among(ids)
            except Exception as exc:  # the store failed: every current follower hears it, as before
                log.warning("the pending-approvals store could not be read: %s", type(exc).__name__)
                for futures in self._followers.values():
                    for f in futures:
                        if not f.done():
                            f.set_exception(exc)
                found = set()
            for wid in found:
                for f in self._followers.get(wid, []):
                    if not f.done():
                        f.set_result(None)
            await asyncio.sleep(self._tick)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._task
