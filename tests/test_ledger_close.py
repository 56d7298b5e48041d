"""A ledger past its close time: it holds what is reserved on it until that is settled or its hold
expires, then finishes, and a finished ledger refuses the next reservation with LEDGER_CLOSED (it is
never restarted empty).

A monthly ledger of a month long past is one whose close time (35 days after the month) has passed.
Before the fix, a reservation on such a ledger made its run loop wait for a deadline of zero, again
and again, without yielding: Temporal's deadlock detector failed every workflow task and the
reservation never got an answer.

The broken variant (`LedgerWithThePastCloseAsADeadline`, the old deadline) is not run in the suite:
its deadlocked workflow thread can keep the test worker from shutting down (seen once in six runs,
hanging the run). Run by hand on 2026-12-04 (`_past_close(..., broken=True)` and
`_past_close_expiry(..., broken=True)`, six runs), it left the reservation unanswered every time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from models.ledger import (
    CommitLayers,
    LedgerLayer,
    LedgerStart,
    LedgerView,
    ReserveLayers,
    monthly_ledger_id,
)
from models.money import Money
from tests.fixtures.spend import SpendStack, new_principal, spend_worker
from workflows.ledger import SpendLedgerWorkflow

BROKEN = "LedgerWithThePastCloseAsADeadline"
T = TypeVar("T")


@workflow.defn(name=BROKEN, sandboxed=False)
class LedgerWithThePastCloseAsADeadline(SpendLedgerWorkflow):
    """WRONG ON PURPOSE: the close time stays a deadline after it has passed, reservations or not."""

    def _next_deadline(self) -> datetime | None:
        times = [r.expires_at for r in self._s.reservations.values()]
        close = self._close_at()
        if close is not None:
            times.append(close)
        return min(times) if times else None

    @workflow.run
    async def run(self, start: LedgerStart) -> LedgerView:
        return await super().run(start)


def _reserve(principal: str, purchase: str, layer: LedgerLayer) -> ReserveLayers:
    return ReserveLayers(purchase_id=purchase, amount=Money.usd(10), layers=[layer], principal_id=principal)


def _past_layer() -> tuple[str, LedgerLayer]:
    """A principal and the monthly ledger of January 2020, a month long past."""
    principal = new_principal()
    past = datetime(2020, 1, 15, tzinfo=UTC)
    layer = LedgerLayer(
        ledger_id=monthly_ledger_id(principal, "cloud", past), limit=Money.usd(100), kind="monthly"
    )
    return principal, layer


@asynccontextmanager
async def _stack(client: Client, tmp: Path, broken: bool, ledger_id: str) -> AsyncIterator[SpendStack]:
    options: dict[str, Any] = {"books": False}  # a ledger's close (test_spend_books.py: the books')
    if broken:
        options = {"extra_workflows": [LedgerWithThePastCloseAsADeadline], "ledger_workflow": BROKEN}
    async with spend_worker(client, tmp, **options) as s:
        try:
            yield s
        finally:  # a ledger stuck in its loop is ended before the worker shuts down
            with contextlib.suppress(RPCError):
                await client.get_workflow_handle(ledger_id).terminate(reason="test over")


async def _answer(call: Awaitable[T], what: str) -> T:
    try:
        return await asyncio.wait_for(call, 10)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise AssertionError(f"{what} got no answer in 10 s") from None


async def _past_close(client: Client, tmp: Path, broken: bool) -> None:
    principal, layer = _past_layer()
    async with _stack(client, tmp, broken, layer.ledger_id) as s:
        out = await _answer(s.spend.reserve_spend(_reserve(principal, "first", layer)), "the reservation")
        assert out.ok
        handle = client.get_workflow_handle(layer.ledger_id, result_type=LedgerView)
        # held, not closed under it
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        view = await s.spend.ledger_view(layer.ledger_id)
        assert view is not None and [r.purchase_id for r in view.reservations] == ["first"]

        commit = CommitLayers(purchase_id="first", amount=Money.usd(10), layers=[layer])
        await _answer(s.spend.commit_spend(commit), "the commit")
        finished = await asyncio.wait_for(handle.result(), timeout=30)
        assert finished.closed and finished.committed == Money.usd(10) and finished.reservations == []

        with pytest.raises(Exception) as refused:  # which one is what is checked below
            await _answer(s.spend.reserve_spend(_reserve(principal, "late", layer)), "the late reservation")
        assert isinstance(refused.value, ApplicationError) and refused.value.type == "LEDGER_CLOSED"
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED  # not restarted
        view = await s.spend.ledger_view(layer.ledger_id)
        assert view is not None and view.committed == Money.usd(10) and view.reservations == []


async def _past_close_expiry(client: Client, tmp: Path, broken: bool) -> None:
    """Never settled: the hold's own expiry ends the wait, and the ledger finishes with nothing spent."""
    principal, layer = _past_layer()
    async with _stack(client, tmp, broken, layer.ledger_id) as s:
        req = _reserve(principal, "held", layer).model_copy(update={"hold_seconds": 2})
        assert (await _answer(s.spend.reserve_spend(req), "the reservation")).ok
        handle = client.get_workflow_handle(layer.ledger_id, result_type=LedgerView)
        finished = await asyncio.wait_for(handle.result(), timeout=30)
        assert finished.closed and finished.purchases_expired == 1
        assert (finished.committed.amount, finished.reserved.amount) == (0, 0)


#: each way out of the wait: the purchase settled (then a late one refused), or its hold expiring
CHECKS = {"settled": _past_close, "expired": _past_close_expiry}


@pytest.mark.parametrize("way", CHECKS)
async def test_a_ledger_past_its_close_holds_the_reservation_then_finishes(
    client: Client, tmp_path: Path, way: str
) -> None:
    await CHECKS[way](client, tmp_path, broken=False)
