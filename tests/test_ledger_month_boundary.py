"""Month boundary and expiry on the time-skipping test server.

A workflow reserves at 23:59:59 UTC on the last day of the month and again two seconds later: the
first purchase counts in that month's ledger, the second in the next month's. Reservations that are
never committed are released by the ledger's timer.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel
from temporalio import workflow
from temporalio.testing import WorkflowEnvironment

from models.ledger import (
    LayeredReserveOutcome,
    LedgerLayer,
    ReserveLayers,
    month_end,
    month_of,
    monthly_ledger_id,
)
from models.money import Money
from quartermaster.converter import data_converter
from tests.fixtures.spend import new_principal, spend_worker


class BoundaryInput(BaseModel):
    principal_id: str


class BoundaryResult(BaseModel):
    first_ledger: str
    first_at: datetime
    first: LayeredReserveOutcome
    second_ledger: str
    second_at: datetime
    second: LayeredReserveOutcome


@workflow.defn(name="MonthBoundaryDriver", sandboxed=False)
class MonthBoundaryDriver:
    """Stands in for the provisioning workflow: picks the ledger from `workflow.now()`."""

    def __init__(self) -> None:
        self._result: BoundaryResult | None = None

    @workflow.query(name="result")
    def result(self) -> BoundaryResult | None:
        return self._result

    @workflow.run
    async def run(self, inp: BoundaryInput) -> BoundaryResult:
        now = workflow.now()
        last_second = month_end(month_of(now)) - timedelta(seconds=1)
        await workflow.sleep(last_second - now)
        first_at = workflow.now()
        first_ledger, first = await self._reserve(inp.principal_id, "late-purchase", 7_200)
        await workflow.sleep(timedelta(seconds=2))
        second_at = workflow.now()
        second_ledger, second = await self._reserve(inp.principal_id, "early-purchase", 600)
        self._result = BoundaryResult(
            first_ledger=first_ledger,
            first_at=first_at,
            first=first,
            second_ledger=second_ledger,
            second_at=second_at,
            second=second,
        )
        return self._result

    async def _reserve(
        self, principal_id: str, purchase_id: str, hold: int
    ) -> tuple[str, LayeredReserveOutcome]:
        ledger_id = monthly_ledger_id(principal_id, "cloud", workflow.now())
        out = await workflow.execute_activity(
            "reserve_spend",
            ReserveLayers(
                purchase_id=purchase_id,
                amount=Money.usd(10),
                layers=[LedgerLayer(ledger_id=ledger_id, limit=Money.usd(100), kind="monthly")],
                principal_id=principal_id,
                hold_seconds=hold,
            ),
            result_type=LayeredReserveOutcome,
            start_to_close_timeout=timedelta(seconds=30),
        )
        return ledger_id, out


@pytest.fixture
async def ts_env(keyring) -> AsyncIterator[WorkflowEnvironment]:  # type: ignore[no-untyped-def]
    from quartermaster.codec import EncryptionCodec

    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(EncryptionCodec(keyring)),
        test_server_existing_path=str(Path(sys.executable).parent / "temporal-test-server"),
    )
    yield env
    await env.shutdown()


def test_ledger_ids_follow_the_utc_calendar_month() -> None:
    assert monthly_ledger_id("p1", "cloud", datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)).endswith(
        "-2026-01"
    )
    assert monthly_ledger_id("p1", "cloud", datetime(2026, 2, 1, 0, 0, 0, tzinfo=UTC)).endswith("-2026-02")
    # 00:30 on 1 February in Paris is still January in UTC
    paris = datetime.fromisoformat("2026-02-01T00:30:00+01:00")
    assert monthly_ledger_id("p1", "cloud", paris).endswith("-2026-01")
    assert month_end("2026-12") == datetime(2027, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        monthly_ledger_id("p1", "cloud", datetime(2026, 1, 1))  # naive: refused


async def test_last_second_of_the_month_counts_in_that_month(
    ts_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = ts_env.client
    principal = new_principal()
    async with spend_worker(
        client, tmp_path, extra_workflows=[MonthBoundaryDriver], search_attributes=False
    ) as s:
        handle = await client.start_workflow(
            MonthBoundaryDriver.run,
            BoundaryInput(principal_id=principal),
            id=f"boundary-{principal}",
            task_queue=s.task_queue,
        )
        # skip exactly to the driver's last-second timer, then second by second (never waiting on the
        # result, which would let the server skip on to the ledgers' expiry timers)
        now = await ts_env.get_current_time()
        await ts_env.sleep(month_end(month_of(now)) - timedelta(seconds=1) - now)
        result = await handle.query(MonthBoundaryDriver.result)
        for _ in range(30):
            if result is not None:
                break
            await ts_env.sleep(timedelta(seconds=1))
            result = await handle.query(MonthBoundaryDriver.result)
        assert result is not None
        assert (result.first_at.hour, result.first_at.minute, result.first_at.second) == (23, 59, 59)
        assert (result.first_at + timedelta(days=1)).day == 1  # the last day of its month
        assert result.first.ok and result.second.ok
        assert result.first_ledger != result.second_ledger
        assert result.first_ledger.endswith(month_of(result.first_at))
        assert result.second_ledger.endswith(month_of(result.second_at))

        first = await s.spend.ledger_view(result.first_ledger)
        second = await s.spend.ledger_view(result.second_ledger)
        assert first is not None and second is not None
        assert first.month == month_of(result.first_at)
        assert [r.purchase_id for r in first.reservations] == ["late-purchase"]
        assert first.reserved == Money.usd(10) and first.remaining == Money.usd(90)
        assert first.reservations[0].reserved_at < month_end(first.month or "")
        assert [r.purchase_id for r in second.reservations] == ["early-purchase"]

        # never committed: the timers release both (10 min and 2 h holds)
        await ts_env.sleep(timedelta(minutes=15))
        second = await s.spend.ledger_view(result.second_ledger)
        first = await s.spend.ledger_view(result.first_ledger)
        assert second is not None and first is not None
        assert (second.reserved.amount, second.purchases_expired) == (0, 1)
        assert first.reserved == Money.usd(10)  # its 2 h hold is still running
        await ts_env.sleep(timedelta(hours=2))
        first = await s.spend.ledger_view(result.first_ledger)
        assert first is not None
        assert (first.reserved.amount, first.committed.amount, first.purchases_expired) == (0, 0, 1)
        assert first.reservations == []
