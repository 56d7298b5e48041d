"""The ledger benchmark's baselines: entities whose `reserve` update does nothing.

In a module of their own, so the sandbox can import it for every run as it imports the ledgers'
modules (`bench.ledger_bench` itself makes keys at import, which the sandbox refuses)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from models.ledger import LedgerStart, ReserveOutcome, ReserveSpend
from models.money import Money


class _Noop:
    """An entity whose `reserve` update does nothing (the SDK wants `run` on each class itself)."""

    @workflow.update(name="reserve")
    def reserve(self, req: ReserveSpend) -> ReserveOutcome:
        m = Money(amount=0)
        return ReserveOutcome(status="reserved", limit=m, committed=m, reserved=m, remaining=m)


@workflow.defn(name="NoopEntity")
class NoopEntity(_Noop):
    """The baseline, run in the worker's sandbox like the ledgers."""

    @workflow.run
    async def run(self, start: LedgerStart) -> None:
        await workflow.wait_condition(lambda: False, timeout=timedelta(days=1))


@workflow.defn(name="UnsandboxedNoopEntity", sandboxed=False)
class UnsandboxedNoopEntity(_Noop):
    """The same outside the sandbox: the baseline of every figure before session 13."""

    @workflow.run
    async def run(self, start: LedgerStart) -> None:
        await workflow.wait_condition(lambda: False, timeout=timedelta(days=1))
