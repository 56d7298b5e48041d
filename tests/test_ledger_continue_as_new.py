"""5,000 purchases on one ledger: it continues as new long before 10,240 history events, carries its
totals and settled purchase ids, and a purchase id re-sent after continue-as-new changes nothing.

Purchases run 8 at a time (each one reserve -> commit, in order): the server admits at most 10
in-flight updates per workflow, and one-at-a-time would take ~90 s on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from models.ledger import CommitLayers, LedgerLayer, ReserveLayers
from models.money import Money
from tests.fixtures.spend import poll, spend_worker

PURCHASES = 5_000
CHAINS = 8
WARN_EVENTS = 10_240


async def test_five_thousand_purchases_continue_as_new(client: Client, tmp_path: Path) -> None:
    ledger_id = f"budget-test-{uuid.uuid4().hex[:12]}"
    layer = LedgerLayer(ledger_id=ledger_id, limit=Money.usd(1_000_000), kind="budget")
    async with spend_worker(client, tmp_path) as stack:
        spend = stack.spend

        async def chain(k: int) -> None:
            for i in range(k, PURCHASES, CHAINS):
                pid = f"buy-{i}"
                out = await spend.reserve_spend(
                    ReserveLayers(purchase_id=pid, amount=Money(amount=3), layers=[layer])
                )
                assert out.ok, out
                await spend.commit_spend(
                    CommitLayers(purchase_id=pid, amount=Money(amount=2), layers=[layer])
                )

        started = time.monotonic()
        await asyncio.gather(*(chain(k) for k in range(CHAINS)))
        print(f"\n{PURCHASES} purchases in {time.monotonic() - started:.1f} s")

        view = await spend.ledger_view(ledger_id)
        assert view is not None
        assert view.committed.amount == 2 * PURCHASES
        assert view.reserved.amount == 0
        assert view.purchases_committed == PURCHASES
        assert view.generation >= 2, "10,000 updates must have continued as new more than once"

        # every run of the chain stayed far below the server's warning size
        runs = await poll(
            lambda: _runs(client, ledger_id), lambda r: len(r) == view.generation + 1, timeout=20
        )
        assert len(runs) == view.generation + 1
        lengths = []
        for run_id in runs:
            events = [
                e async for e in client.get_workflow_handle(ledger_id, run_id=run_id).fetch_history_events()
            ]
            lengths.append(len(events))
            assert len(events) < WARN_EVENTS
            kinds = {e.event_type for e in events}
            if run_id != runs[0]:  # the newest run is still open
                assert EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW in kinds
        print(f"runs: {len(runs)}, history lengths: {sorted(lengths)}")

        # purchase 0 was applied in the first run: re-sending it now changes nothing
        again = await spend.reserve_spend(
            ReserveLayers(purchase_id="buy-0", amount=Money(amount=3), layers=[layer])
        )
        assert again.ok and again.outcome is not None and again.outcome.status == "already_committed"
        await spend.commit_spend(CommitLayers(purchase_id="buy-0", amount=Money(amount=2), layers=[layer]))
        after = await spend.ledger_view(ledger_id)
        assert after is not None
        assert (after.committed, after.reserved, after.purchases_committed) == (
            view.committed,
            view.reserved,
            view.purchases_committed,
        )


async def _runs(client: Client, workflow_id: str) -> list[str]:
    """Run ids of every execution with this workflow id, newest first."""
    found = [wf async for wf in client.list_workflows(f'WorkflowId = "{workflow_id}"')]
    found.sort(key=lambda wf: wf.start_time, reverse=True)
    return [wf.run_id for wf in found]
