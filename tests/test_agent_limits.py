"""The agent layers under the monthly cap, on the real dev server (and the rolling hour on the
time-skipping server): an agent's monthly limit, the per-purchase maximum and purchases per hour each
refuse at their edge with their own code and allow just below it, touching no other ledger."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.spend import SpendActivities
from models.ledger import (
    CommitLayers,
    LayeredReserveOutcome,
    LedgerLayer,
    LedgerStart,
    ReleaseLayers,
    ReleaseSpend,
    ReserveLayers,
    ReserveOutcome,
    ReserveSpend,
    SettleOutcome,
    agent_ledger_id,
    monthly_ledger_id,
    velocity_ledger_id,
)
from models.limits import LimitChange, LimitKind, SpendSummaryRequest
from models.money import Money
from quartermaster.converter import data_converter
from tests.fixtures.spend import SpendStack, new_principal, poll, spend_worker


def layers(principal: str, agent: str, provider: str = "cloud") -> list[LedgerLayer]:
    """What the provisioning workflow reserves on: the provider's cap and the agent's two layers."""
    now, usd = datetime.now(UTC), Money.usd(100)
    return [
        LedgerLayer(ledger_id=monthly_ledger_id(principal, provider, now), limit=usd, kind="monthly"),
        LedgerLayer(ledger_id=agent_ledger_id(principal, agent, now), limit=usd, kind="agent_monthly"),
        LedgerLayer(ledger_id=velocity_ledger_id(principal, agent), limit=usd, kind="velocity"),
    ]


def reserve(principal: str, agent: str, pid: str, usd: float, provider: str = "cloud") -> ReserveLayers:
    return ReserveLayers(
        purchase_id=pid,
        amount=Money.usd(usd),
        layers=layers(principal, agent, provider),
        principal_id=principal,
    )


def held(out: LayeredReserveOutcome, principal: str, agent: str) -> list[LedgerLayer]:
    """The layers a reservation holds: commit and release go there (skipped layers hold nothing)."""
    return [layer for layer in layers(principal, agent) if layer.ledger_id not in out.skipped]


def change(
    principal: str,
    kind: LimitKind,
    *,
    agent: str | None = None,
    usd: float | None = None,
    per_hour: int | None = None,
) -> LimitChange:
    cid = f"test-{uuid.uuid4().hex[:8]}"
    return LimitChange(
        change_id=cid,
        principal_id=principal,
        kind=kind,
        agent=agent,
        limit=Money.usd(usd) if usd is not None else None,
        purchases_per_hour=per_hour,
        approval_id=f"{cid}.limit_change",
        changed_at=datetime.now(UTC),
    )


async def test_agent_monthly_limit_counts_every_provider_and_refuses_at_its_edge(
    spend_stack: SpendStack,
) -> None:
    spend, principal = spend_stack.spend, new_principal()
    await spend.set_spend_limit(change(principal, "agent_monthly", agent="builder", usd=50))
    first = await spend.reserve_spend(reserve(principal, "builder", "a", 30, "cloud"))
    assert first.ok
    # another provider has its own cap, but the agent's month is one: 30 + 20 = 50 fits exactly
    assert (await spend.reserve_spend(reserve(principal, "builder", "b", 20, "db"))).ok
    over = await spend.reserve_spend(reserve(principal, "builder", "c", 0.01, "mail"))
    assert not over.ok and over.code == "AGENT_MONTHLY_LIMIT_EXCEEDED"
    assert over.refused_by is not None and over.refused_by.kind == "agent_monthly"
    # the refused purchase touched no provider cap; another agent is not limited by this one's
    assert await spend.ledger_view(monthly_ledger_id(principal, "mail", datetime.now(UTC))) is None
    assert (await spend.reserve_spend(reserve(principal, "reviewer", "d", 60, "mail"))).ok
    ledger = await spend.ledger_view(agent_ledger_id(principal, "builder", datetime.now(UTC)))
    assert ledger is not None
    assert (ledger.limit, ledger.reserved, ledger.remaining) == (Money.usd(50), Money.usd(50), Money.usd(0))
    # committing less than reserved frees the rest: a purchase just below the new edge fits
    cap = held(first, principal, "builder")
    await spend.commit_spend(CommitLayers(purchase_id="a", amount=Money.usd(29.99), layers=cap))
    assert not (await spend.reserve_spend(reserve(principal, "builder", "e", 0.02))).ok
    assert (await spend.reserve_spend(reserve(principal, "builder", "e", 0.01))).ok


async def test_an_agent_limit_set_mid_month_counts_what_the_agent_already_spent(
    spend_stack: SpendStack,
) -> None:
    spend, principal = spend_stack.spend, new_principal()
    first = await spend.reserve_spend(reserve(principal, "builder", "a", 40))
    assert first.ok
    await spend.commit_spend(
        CommitLayers(purchase_id="a", amount=Money.usd(40), layers=held(first, principal, "builder"))
    )
    # the default for every agent, set after the purchase: the ledger takes it with the next one
    await spend.set_spend_limit(change(principal, "agent_monthly", usd=45))
    # `qm billing show` reads the new limit at once, before the ledger has taken it
    summary = await poll(
        lambda: spend.spend_view(SpendSummaryRequest(principal_id=principal)),
        lambda s: any(a.agent == "builder" for a in s.agents),
    )
    (row,) = [a for a in summary.agents if a.agent == "builder"]
    assert (row.limits.monthly, row.monthly_source, row.remaining) == (Money.usd(45), "default", Money.usd(5))
    out = await spend.reserve_spend(reserve(principal, "builder", "b", 5.01))
    assert not out.ok and out.code == "AGENT_MONTHLY_LIMIT_EXCEEDED"
    assert out.outcome is not None and out.outcome.committed == Money.usd(40)
    assert (await spend.reserve_spend(reserve(principal, "builder", "b", 5))).ok
    # the agent's own limit wins over the default
    await spend.set_spend_limit(change(principal, "agent_monthly", agent="builder", usd=100))
    assert (await spend.reserve_spend(reserve(principal, "builder", "c", 55))).ok


async def test_per_purchase_maximum_refuses_above_it_and_touches_no_ledger(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    await spend.set_spend_limit(change(principal, "per_transaction", usd=20))
    over = await spend.reserve_spend(reserve(principal, "builder", "a", 20.01))
    assert (over.ok, over.code, over.refused_by) == (False, "TRANSACTION_LIMIT_EXCEEDED", None)
    for layer in layers(principal, "builder"):
        assert await spend.ledger_view(layer.ledger_id) is None
    assert (await spend.reserve_spend(reserve(principal, "builder", "a", 20))).ok
    # one agent may get a larger maximum than the default
    await spend.set_spend_limit(change(principal, "per_transaction", agent="buyer", usd=30))
    assert (await spend.reserve_spend(reserve(principal, "buyer", "b", 30))).ok
    assert not (await spend.reserve_spend(reserve(principal, "buyer", "c", 30.01))).ok


async def _at_the_velocity_edge(spend: SpendActivities, principal: str) -> list[LayeredReserveOutcome]:
    """Ten purchases at once by an agent allowed three an hour."""
    await spend.set_spend_limit(change(principal, "velocity", agent="builder", per_hour=3))
    return await asyncio.gather(
        *(spend.reserve_spend(reserve(principal, "builder", f"p{i}", 1)) for i in range(10))
    )


async def test_concurrent_purchases_at_the_velocity_edge_exactly_n_pass(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    outs = await _at_the_velocity_edge(spend, principal)
    assert sum(o.ok for o in outs) == 3
    assert {o.code for o in outs if not o.ok} == {"VELOCITY_LIMIT_EXCEEDED"}
    # refused ones were rolled back everywhere: the cap holds exactly the three that passed
    cap = await spend.ledger_view(monthly_ledger_id(principal, "cloud", datetime.now(UTC)))
    assert cap is not None and cap.reserved == Money.usd(3) and len(cap.reservations) == 3
    velocity = await spend.ledger_view(velocity_ledger_id(principal, "builder"))
    assert velocity is not None and (velocity.reserved.amount, velocity.remaining.amount) == (3, 0)
    # a released purchase does not count; a committed one does
    passed = [f"p{i}" for i, o in enumerate(outs) if o.ok]
    await spend.release_spend(ReleaseLayers(purchase_id=passed[0], layers=layers(principal, "builder")))
    for pid in passed[1:]:
        await spend.commit_spend(
            CommitLayers(purchase_id=pid, amount=Money.usd(1), layers=layers(principal, "builder"))
        )
    assert (await spend.reserve_spend(reserve(principal, "builder", "q1", 1))).ok
    assert not (await spend.reserve_spend(reserve(principal, "builder", "q2", 1))).ok
    # without a velocity limit an agent's purchases are not counted at all (the layer is skipped)
    free = await spend.reserve_spend(reserve(principal, "reviewer", "r1", 1))
    assert free.ok and free.skipped == [velocity_ledger_id(principal, "reviewer")]
    assert await spend.ledger_view(velocity_ledger_id(principal, "reviewer")) is None


async def test_a_one_time_approval_over_the_cap_never_lifts_an_agent_layer(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    await spend.set_spend_limit(change(principal, "agent_monthly", agent="builder", usd=150))
    assert (await spend.reserve_spend(reserve(principal, "builder", "a", 100))).ok
    approved = reserve(principal, "builder", "b", 60).model_copy(
        update={"override_approval_id": "provision-x.spend_limit"}
    )
    out = await spend.reserve_spend(approved)  # the cap (USD 100) would lift; the agent's 150 does not
    assert not out.ok and out.code == "AGENT_MONTHLY_LIMIT_EXCEEDED"
    fits = reserve(principal, "builder", "b", 50).model_copy(
        update={"override_approval_id": "provision-x.spend_limit"}
    )
    assert (await spend.reserve_spend(fits)).ok


async def test_billing_view_reports_every_agent_layer(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    await spend.set_spend_limit(change(principal, "agent_monthly", agent="builder", usd=50))
    await spend.set_spend_limit(change(principal, "per_transaction", usd=20))
    await spend.set_spend_limit(change(principal, "velocity", agent="builder", per_hour=4))
    first = await spend.reserve_spend(reserve(principal, "builder", "a", 12))
    assert first.ok and first.skipped == []
    await spend.commit_spend(
        CommitLayers(purchase_id="a", amount=Money.usd(12), layers=held(first, principal, "builder"))
    )
    assert (await spend.reserve_spend(reserve(principal, "builder", "b", 3))).ok
    summary = await spend.spend_view(SpendSummaryRequest(principal_id=principal))
    (row,) = [a for a in summary.agents if a.agent == "builder"]
    assert (row.limits.monthly, row.monthly_source) == (Money.usd(50), "agent")
    assert (row.limits.per_transaction, row.per_transaction_source) == (Money.usd(20), "default")
    assert (row.limits.purchases_per_hour, row.velocity_source) == (4, "agent")
    assert row.ledger is not None
    assert (row.ledger.committed, row.ledger.reserved, row.remaining) == (
        Money.usd(12),
        Money.usd(3),
        Money.usd(35),
    )
    assert row.purchases_last_hour == 2
    # an agent with no limits of its own is found by its ledger (visibility lags a little)
    assert (await spend.reserve_spend(reserve(principal, "reviewer", "c", 7))).ok
    summary = await poll(
        lambda: spend.spend_view(SpendSummaryRequest(principal_id=principal)),
        lambda s: any(a.agent == "reviewer" for a in s.agents),
    )
    (other,) = [a for a in summary.agents if a.agent == "reviewer"]
    assert (other.limits.per_transaction, other.per_transaction_source) == (Money.usd(20), "default")
    assert other.monthly_source == "none" and other.ledger is not None
    assert other.ledger.reserved == Money.usd(7)


@workflow.defn(name="NaiveCountingLedger", sandboxed=False)
class NaiveCountingLedger:
    """WRONG ON PURPOSE: counts the purchases, then awaits (say, a fraud check), then records one.

    On a velocity layer the await lasts until the reservations checked but not yet recorded overrun
    the limit (or 2 s pass), so the race this ledger loses does not depend on how fast a loaded
    machine delivers the ten concurrent updates.
    """

    def __init__(self) -> None:
        self.kind, self.limit, self.held = "budget", 0, dict[str, int]()
        self.checking: dict[str, int] = {}

    @workflow.run
    async def run(self, start: LedgerStart) -> None:
        self.kind, self.limit = start.kind, start.limit.amount
        await workflow.wait_condition(lambda: False)

    def _outcome(self, status: str) -> ReserveOutcome:
        used = sum(self.held.values())
        m = Money
        return ReserveOutcome(
            status=status,  # type: ignore[arg-type]
            limit=m(amount=self.limit),
            committed=m(amount=0),
            reserved=m(amount=used),
            remaining=m(amount=max(0, self.limit - used)),
        )

    @workflow.update(name="reserve")
    async def reserve(self, req: ReserveSpend) -> ReserveOutcome:
        units = 1 if self.kind == "velocity" else req.amount.amount
        limit = req.limit.amount if req.limit is not None else self.limit
        if sum(self.held.values()) + units > limit:
            return self._outcome("over_limit")
        self.checking[req.purchase_id] = units
        if self.kind == "velocity":  # the other layers of the chain are not under test here
            try:
                await workflow.wait_condition(
                    lambda: sum(self.held.values()) + sum(self.checking.values()) > limit,
                    timeout=timedelta(seconds=2),
                )
            except TimeoutError:
                pass
        self.held[req.purchase_id] = self.checking.pop(req.purchase_id)
        return self._outcome("reserved")

    @workflow.update(name="release")
    def release(self, req: ReleaseSpend) -> SettleOutcome:
        self.held.pop(req.purchase_id, None)
        o = self._outcome("reserved")
        return SettleOutcome(
            status="released",
            limit=o.limit,
            committed=o.committed,
            reserved=o.reserved,
            remaining=o.remaining,
        )


async def test_the_velocity_edge_catches_a_ledger_that_counts_across_an_await(
    client: Client, tmp_path: Path
) -> None:
    async with spend_worker(
        client, tmp_path, extra_workflows=[NaiveCountingLedger], ledger_workflow="NaiveCountingLedger"
    ) as s:
        outs = await _at_the_velocity_edge(s.spend, new_principal())
    assert sum(o.ok for o in outs) > 3


@pytest.fixture
async def ts_env(keyring) -> AsyncIterator[WorkflowEnvironment]:  # type: ignore[no-untyped-def]
    from quartermaster.codec import EncryptionCodec

    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(EncryptionCodec(keyring)),
        test_server_existing_path=str(Path(sys.executable).parent / "temporal-test-server"),
    )
    yield env
    await env.shutdown()


async def test_velocity_counts_a_rolling_hour(ts_env: WorkflowEnvironment, tmp_path: Path) -> None:
    principal = new_principal()
    async with spend_worker(ts_env.client, tmp_path, search_attributes=False) as s:
        await s.spend.set_spend_limit(change(principal, "velocity", agent="builder", per_hour=2))

        async def buy(pid: str) -> bool:
            out = await s.spend.reserve_spend(reserve(principal, "builder", pid, 1))
            if out.ok:
                await s.spend.commit_spend(
                    CommitLayers(purchase_id=pid, amount=Money.usd(1), layers=layers(principal, "builder"))
                )
            return out.ok

        assert [await buy("a"), await buy("b"), await buy("c")] == [True, True, False]
        await ts_env.sleep(timedelta(minutes=59))
        assert not await buy("d")  # "a" and "b" still count
        await ts_env.sleep(timedelta(minutes=1, seconds=1))
        assert [await buy("e"), await buy("f"), await buy("g")] == [True, True, False]


async def test_a_delegate_is_bound_by_every_agent_of_its_chain(spend_stack: SpendStack) -> None:
    spend, principal = spend_stack.spend, new_principal()
    await spend.set_spend_limit(change(principal, "per_transaction", agent="planner", usd=5))
    await spend.set_spend_limit(change(principal, "agent_monthly", agent="planner", usd=8))
    chain = [*layers(principal, "planner"), *layers(principal, "helper")[1:]]  # one cap, both agents

    def by_helper(pid: str, usd: float) -> ReserveLayers:
        return ReserveLayers(purchase_id=pid, amount=Money.usd(usd), layers=chain, principal_id=principal)

    over = await spend.reserve_spend(by_helper("a", 5.01))  # the helper has no maximum; its delegator does
    assert (over.ok, over.code) == (False, "TRANSACTION_LIMIT_EXCEEDED")
    assert (await spend.reserve_spend(by_helper("a", 5))).ok
    out = await spend.reserve_spend(by_helper("b", 3.01))  # 5 + 3.01 > the planner's 8 this month
    assert (out.ok, out.code) == (False, "AGENT_MONTHLY_LIMIT_EXCEEDED")
    assert out.refused_by is not None and "planner" in out.refused_by.ledger_id
    assert (await spend.reserve_spend(by_helper("b", 3))).ok
    helper = await spend.ledger_view(agent_ledger_id(principal, "helper", datetime.now(UTC)))
    assert helper is not None and helper.reserved == Money.usd(8)
