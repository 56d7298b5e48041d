"""Concurrent purchases against a USD 100 monthly cap on the real dev server.

Each purchase is reserve_spend -> a provider call that fails 10 % of the time (seeded) -> commit or
release, some with duplicated calls (what activity retries do). The harness samples the ledger while
the purchases run and checks the invariant, the totals and idempotency at the end. It then runs
against a deliberately naive ledger (check in the validator, deduct after an await) and must catch
the overshoot: a harness that cannot fail proves nothing.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio import workflow
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.spend import SpendActivities
from models.ledger import (
    CommitLayers,
    CommitSpend,
    LedgerLayer,
    LedgerStart,
    LedgerView,
    ReleaseLayers,
    ReleaseSpend,
    ReserveLayers,
    ReserveOutcome,
    ReserveSpend,
    SettleOutcome,
    monthly_ledger_id,
)
from models.money import Money
from tests.fixtures.spend import new_principal, spend_worker

CAP = 10_000  # USD 100, the protocol default: these principals never set a limit


@dataclass
class Report:
    accepted: int = 0
    rejected: int = 0
    provider_failures: int = 0
    charged: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    #: a lower bound of the ledger's committed + reserved at any instant: grants count once answered
    #: and stop counting before their release/commit is sent; charges count once committed
    outstanding: int = 0
    charged_total: int = 0
    violations: list[str] = field(default_factory=list)


class ProviderCall:
    """A provider charge that fails 10 % of the time (seeded) and sometimes charges less than held."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    async def charge(self, held: int) -> int | None:
        # four draws per call whatever happens: the k-th call's outcome depends on the seed only
        pause, fail, partial, share = (self._rng.random() for _ in range(4))
        await asyncio.sleep(pause * 0.01)
        if fail < 0.10:
            return None
        return held if partial < 0.7 else max(1, int(held * share))


async def run_harness(spend: SpendActivities, n: int, seed: int) -> tuple[Report, LedgerView]:
    principal = new_principal()
    layer = LedgerLayer(
        ledger_id=monthly_ledger_id(principal, "cloud", datetime.now(UTC)),
        limit=Money.usd(100),
        kind="monthly",
    )
    rng = random.Random(seed)
    amounts = [rng.randint(100, 3_000) for _ in range(n)]  # USD 1..30, ~USD 1,550 demand per 100
    provider = ProviderCall(seed)
    report = Report()
    running = True

    async def sample() -> None:
        while running:
            view = await spend.ledger_view(layer.ledger_id)
            if view is not None:
                report.samples += 1
                used = view.committed.amount + view.reserved.amount
                if used > view.effective_limit.amount:
                    report.violations.append(f"sampled committed+reserved {used} > limit")
            await asyncio.sleep(0.02)

    async def reserve(req: ReserveLayers) -> bool:
        try:
            return (await spend.reserve_spend(req)).ok
        except ApplicationError as err:
            if err.type == "OVER_LIMIT":  # a ledger whose validator refuses
                return False
            raise

    async def purchase(i: int) -> None:
        pid = f"buy-{seed}-{i}"
        amount = Money(amount=amounts[i])
        req = ReserveLayers(purchase_id=pid, amount=amount, layers=[layer], principal_id=principal)
        ok = await reserve(req)
        if i % 7 == 0:  # a retried activity: the same reservation again; the last answer counts
            again = await reserve(req)
            if ok and not again:
                report.violations.append(f"{pid}: a retried reserve lost the reservation")
            ok = again
        if not ok:
            report.rejected += 1
            return
        report.accepted += 1
        report.outstanding += amount.amount
        if report.outstanding + report.charged_total > CAP:
            held = report.outstanding + report.charged_total
            report.violations.append(f"granted holds + charges {held} > cap {CAP}")
        charged = await provider.charge(amount.amount)
        if charged is None:
            report.provider_failures += 1
            report.outstanding -= amount.amount
            await spend.release_spend(ReleaseLayers(purchase_id=pid, layers=[layer]))
            return
        commit = CommitLayers(purchase_id=pid, amount=Money(amount=charged), layers=[layer])
        report.outstanding -= amount.amount
        await spend.commit_spend(commit)
        report.charged_total += charged
        if i % 5 == 0:  # a retried commit must not charge twice
            await spend.commit_spend(commit)
        if pid in report.charged:
            report.violations.append(f"{pid} charged twice by the harness")
        report.charged[pid] = charged

    sampler = asyncio.create_task(sample())
    try:
        await asyncio.gather(*(purchase(i) for i in range(n)))
    finally:
        running = False
        await sampler
    view = await spend.ledger_view(layer.ledger_id)
    assert view is not None
    expected = sum(report.charged.values())
    if view.committed.amount > CAP:
        report.violations.append(f"committed {view.committed.amount} > cap {CAP}")
    if view.committed.amount != expected:
        report.violations.append(f"ledger committed {view.committed.amount} != charged {expected}")
    if view.reserved.amount != 0 or view.reservations:
        report.violations.append(f"{len(view.reservations)} reservations left behind")
    if view.purchases_committed != len(report.charged):
        report.violations.append(
            f"{view.purchases_committed} commits recorded, {len(report.charged)} charged"
        )
    print(
        f"\n{n} purchases (seed {seed}): accepted {report.accepted}, rejected {report.rejected}, "
        f"provider failures {report.provider_failures}, committed {view.committed} of {view.limit}, "
        f"{report.samples} samples, violations {len(report.violations)}"
    )
    return report, view


async def test_concurrent_purchases_never_exceed_the_cap(client: Client, tmp_path: Path) -> None:
    async with spend_worker(client, tmp_path) as stack:
        for n, seed in ((40, 3), (200, 15)):  # seeds whose provider fails within its first 2 calls
            report, view = await run_harness(stack.spend, n, seed)
            assert report.violations == []
            assert view.committed.amount <= CAP
            assert report.accepted > 0 and report.rejected > 0  # the cap actually bit
            assert report.provider_failures > 0  # and the failure path ran


# ---- the deliberately broken ledger -----------------------------------------------------------------


@workflow.defn(name="NaiveSpendLedger", sandboxed=False)
class NaiveSpendLedger:
    """WRONG ON PURPOSE: checks the limit in the validator, deducts after an await."""

    def __init__(self) -> None:
        self.limit = 0
        self.committed = 0
        self.held: dict[str, int] = {}
        self.done: set[str] = set()
        self.checking: dict[str, int] = {}

    @workflow.run
    async def run(self, start: LedgerStart) -> None:
        self.limit = start.limit.amount
        await workflow.wait_condition(lambda: False)

    def _outcome(self, status: str) -> ReserveOutcome:
        m = Money
        reserved = sum(self.held.values())
        return ReserveOutcome(
            status=status,  # type: ignore[arg-type]
            limit=m(amount=self.limit),
            committed=m(amount=self.committed),
            reserved=m(amount=reserved),
            remaining=m(amount=max(0, self.limit - self.committed - reserved)),
        )

    @workflow.update(name="reserve")
    async def reserve(self, req: ReserveSpend) -> ReserveOutcome:
        if req.purchase_id in self.held or req.purchase_id in self.done:
            return self._outcome("already_reserved")
        if self.committed + sum(self.held.values()) + req.amount.amount > self.limit:
            return self._outcome("over_limit")
        # e.g. a fraud check: any await will do. It lasts until the reservations checked but not yet
        # recorded overrun the room (or 2 s pass), so the race this ledger loses does not depend on
        # how fast a loaded machine delivers the concurrent updates.
        self.checking[req.purchase_id] = req.amount.amount
        try:
            await workflow.wait_condition(self._overrun, timeout=timedelta(seconds=2))
        except TimeoutError:
            pass
        self.held[req.purchase_id] = self.checking.pop(req.purchase_id)
        return self._outcome("reserved")

    def _overrun(self) -> bool:
        return self.committed + sum(self.held.values()) + sum(self.checking.values()) > self.limit

    @reserve.validator
    def _check(self, req: ReserveSpend) -> None:
        if self.committed + sum(self.held.values()) + req.amount.amount > self.limit:
            raise ApplicationError("over the limit", type="OVER_LIMIT", non_retryable=True)

    @workflow.update(name="commit")
    def commit(self, req: CommitSpend) -> SettleOutcome:
        self.committed += req.amount.amount
        self.held.pop(req.purchase_id, None)
        self.done.add(req.purchase_id)
        return self._settled("committed")

    @workflow.update(name="release")
    def release(self, req: ReleaseSpend) -> SettleOutcome:
        self.held.pop(req.purchase_id, None)
        return self._settled("released")

    def _settled(self, status: str) -> SettleOutcome:
        o = self._outcome("reserved")
        return SettleOutcome(
            status=status,  # type: ignore[arg-type]
            limit=o.limit,
            committed=o.committed,
            reserved=o.reserved,
            remaining=o.remaining,
        )

    @workflow.query(name="view")
    def view(self) -> LedgerView:
        o = self._outcome("reserved")
        return LedgerView(
            ledger_id=workflow.info().workflow_id,
            kind="monthly",
            month=None,
            limit=o.limit,
            effective_limit=o.limit,
            committed=o.committed,
            reserved=o.reserved,
            remaining=o.remaining,
            purchases_committed=len(self.done),
        )


async def test_the_harness_catches_a_naive_ledger(client: Client, tmp_path: Path) -> None:
    async with spend_worker(
        client, tmp_path, extra_workflows=[NaiveSpendLedger], ledger_workflow="NaiveSpendLedger"
    ) as stack:
        report, _ = await run_harness(stack.spend, 40, 3)
    print("naive ledger violations:", *report.violations[:5], sep="\n  ")
    assert any("> cap" in v or "> limit" in v for v in report.violations), report.violations
