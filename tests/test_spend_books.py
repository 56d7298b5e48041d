"""Spend books (one entity per principal holding every layer) on the real dev server: one update per
purchase step, all or nothing, a layer already in a `SpendLedger` kept there, refusals of forged or
malformed calls before history, continue-as-new, and closed months. Each safety check also runs against
a deliberately broken variant and must catch it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.spend import SpendActivities
from models.authority import ProofKind
from models.books import (
    BookReserve,
    BooksReserve,
    BooksReserveOutcome,
    BooksSettle,
    BooksStart,
    BooksView,
    books_workflow_id,
)
from models.ledger import (
    CommitLayers,
    LedgerLayer,
    LedgerStart,
    ReleaseLayers,
    ReserveLayers,
    agent_ledger_id,
    monthly_ledger_id,
)
from models.money import MAX_MINOR_UNITS, Money
from quartermaster.crypto.authority import AuthoritySigner
from quartermaster.keys import Keyring
from tests.fixtures.spend import TEST_KEYS, SpendStack, new_principal, spend_worker
from tests.test_spend_concurrency import CAP, run_harness
from workflows.books import SpendBooksWorkflow


def _layers(principal: str) -> tuple[LedgerLayer, LedgerLayer, LedgerLayer]:
    now = datetime.now(UTC)
    usd = Money.usd(100)
    return (
        LedgerLayer(ledger_id=monthly_ledger_id(principal, "cloud", now), limit=usd, kind="monthly"),
        LedgerLayer(ledger_id=agent_ledger_id(principal, "builder", now), limit=usd, kind="agent_monthly"),
        LedgerLayer(ledger_id=f"budget-session-{uuid.uuid4().hex[:8]}", limit=Money.usd(20), kind="budget"),
    )


def _reserve(principal: str, pid: str, usd: float, *layers: LedgerLayer) -> ReserveLayers:
    return ReserveLayers(purchase_id=pid, amount=Money.usd(usd), layers=list(layers), principal_id=principal)


async def _events(client: Client, workflow_id: str) -> list[str]:
    """The names of the updates the workflow accepted, in order."""
    names = []
    async for e in client.get_workflow_handle(workflow_id).fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            names.append(e.workflow_execution_update_accepted_event_attributes.accepted_request.input.name)
    return names


async def _exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
        return True
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise


def _signer() -> AuthoritySigner:
    return AuthoritySigner.from_keyring(Keyring.from_json(TEST_KEYS.read_text()))


# ---- one update per step, and what a user checks afterwards ----------------------------------------


async def test_a_purchase_is_one_update_per_step_on_the_books(
    spend_stack: SpendStack, client: Client
) -> None:
    spend, principal = spend_stack.spend, new_principal()
    cap, agent, budget = _layers(principal)
    out = await spend.reserve_spend(_reserve(principal, "buy-1", 15, cap, agent, budget))
    assert out.ok and len(out.outcomes) == 3
    await spend.commit_spend(
        CommitLayers(purchase_id="buy-1", amount=Money.usd(12), layers=[cap, agent, budget])
    )
    books_id = books_workflow_id(principal)
    assert await _events(client, books_id) == ["reserve_all", "commit_all"]
    for layer in (cap, agent, budget):  # no ledger of its own
        assert not await _exists(client, layer.ledger_id)
    views = [await spend.ledger_view(layer.ledger_id, principal) for layer in (cap, agent, budget)]
    assert [(v.committed, v.reserved, v.purchases_committed) for v in views if v] == [
        (Money.usd(12), Money.usd(0), 1)
    ] * 3
    # a retried commit (an activity retry) counts once
    await spend.commit_spend(
        CommitLayers(purchase_id="buy-1", amount=Money.usd(12), layers=[cap, agent, budget])
    )
    again = await spend.ledger_view(cap.ledger_id)
    assert again is not None and again.committed == Money.usd(12)


# ---- all or nothing, and a broken variant that rolls nothing back -----------------------------------


@workflow.defn(name="BooksWithoutRollBack", sandboxed=False)
class BooksWithoutRollBack(SpendBooksWorkflow):
    """WRONG ON PURPOSE: a refusal keeps what the layers before it held."""

    @workflow.update(name="reserve_all")
    def reserve_all(self, req: BooksReserve) -> BooksReserveOutcome:  # type: ignore[override]
        outcomes = []
        for i, layer in enumerate(req.layers):
            out = self._book(layer.start).reserve(self._spend(req, layer))
            outcomes.append(out)
            if out.status not in ("reserved", "already_reserved", "already_committed"):
                return BooksReserveOutcome(refused=i, outcomes=outcomes)
        return BooksReserveOutcome(outcomes=outcomes)

    @workflow.run
    async def run(self, start: BooksStart) -> BooksView:
        return await super().run(start)


async def _refusal_holds_nothing(spend: SpendActivities) -> list[str]:
    """What is wrong after a purchase the second layer refuses (empty when nothing is held)."""
    principal = new_principal()
    cap, _, budget = _layers(principal)
    assert (await spend.reserve_spend(_reserve(principal, "big", 95, cap))).ok  # the cap: 5 left
    out = await spend.reserve_spend(_reserve(principal, "small", 10, cap, budget))  # budget first, then cap
    wrong = [] if not out.ok and out.refused_by == cap else [f"not refused by the cap: {out}"]
    view = await spend.ledger_view(budget.ledger_id, principal)
    if view is not None and (view.reserved.amount or view.reservations):
        wrong.append(f"the budget still holds {view.reserved} after the refusal")
    # and the purchase may retry once there is room
    await spend.release_spend(ReleaseLayers(purchase_id="big", layers=[cap]))
    if not (await spend.reserve_spend(_reserve(principal, "small", 10, cap, budget))).ok:
        wrong.append("the refused purchase could not retry")
    return wrong


async def test_a_refusal_holds_nothing_on_any_book(spend_stack: SpendStack) -> None:
    assert await _refusal_holds_nothing(spend_stack.spend) == []


async def test_the_check_catches_books_without_roll_back(client: Client, tmp_path: Path) -> None:
    broken = {
        "extra_workflows": [BooksWithoutRollBack],
        "books": True,
        "books_workflow": "BooksWithoutRollBack",
    }
    async with spend_worker(client, tmp_path, **broken) as s:  # type: ignore[arg-type]
        wrong = await _refusal_holds_nothing(s.spend)
    assert any("still holds" in w for w in wrong), wrong


# ---- the cap under concurrency, and naive books that hold after an await ----------------------------


@workflow.defn(name="NaiveSpendBooks", sandboxed=False)
class NaiveSpendBooks(SpendBooksWorkflow):
    """WRONG ON PURPOSE: checks every layer's room, awaits (say, a fraud check), then holds."""

    checking: dict[str, int]

    @workflow.update(name="reserve_all")
    async def reserve_all(self, req: BooksReserve) -> BooksReserveOutcome:  # type: ignore[override]
        if not hasattr(self, "checking"):
            self.checking = {}
        books = [self._book(layer.start) for layer in req.layers]
        if any(b.outcome("reserved").remaining.amount < req.amount.amount for b in books):
            return BooksReserveOutcome(refused=0, outcomes=[books[0].outcome("over_limit")])
        self.checking[req.purchase_id] = req.amount.amount

        def overrun() -> bool:
            return any(sum(self.checking.values()) > b.outcome("reserved").remaining.amount for b in books)

        try:
            await workflow.wait_condition(overrun, timeout=timedelta(seconds=2))
        except TimeoutError:
            pass
        self.checking.pop(req.purchase_id)
        for book, layer in zip(books, req.layers, strict=True):
            book.s.limit = Money(amount=MAX_MINOR_UNITS, currency=book.currency)  # "it was checked"
            book.reserve(self._spend(req, layer.model_copy(update={"limit": None})))
            book.s.limit = Money.usd(100)
        return BooksReserveOutcome(outcomes=[b.outcome("reserved", req.purchase_id) for b in books])

    @workflow.run
    async def run(self, start: BooksStart) -> BooksView:
        return await super().run(start)


@pytest.mark.parametrize("books", [True, False], ids=["books", "ledgers"])
async def test_concurrent_purchases_never_exceed_the_cap_in_either_layout(
    client: Client, tmp_path: Path, books: bool
) -> None:
    async with spend_worker(client, tmp_path, books=books) as stack:
        report, view = await run_harness(stack.spend, 200, 15)
    assert report.violations == []
    assert view.committed.amount <= CAP and report.accepted > 0 and report.rejected > 0


async def test_the_harness_catches_naive_books(client: Client, tmp_path: Path) -> None:
    broken = {"extra_workflows": [NaiveSpendBooks], "books": True, "books_workflow": "NaiveSpendBooks"}
    async with spend_worker(client, tmp_path, **broken) as stack:  # type: ignore[arg-type]
        report, _ = await run_harness(stack.spend, 40, 3)
    assert any("> cap" in v or "> limit" in v for v in report.violations), report.violations


# ---- a layer already in a SpendLedger stays there --------------------------------------------------


class BooksForEveryLayer(SpendActivities):
    """WRONG ON PURPOSE: sends every layer to the books, also one whose ledger already counts it."""

    async def _ledger_exists(self, ledger_id: str) -> bool:
        return False


async def _upgraded_mid_month(stack: SpendStack, books_type: type[SpendActivities]) -> int:
    """USD 60 spent in the month's ledger before books; then, with books, purchases of 50 and 30.
    Returns the month's total over its ledger and its book."""
    principal = new_principal()
    cap, _, budget = _layers(principal)
    before = SpendActivities(stack.client, stack.task_queue, authority=_signer(), books=False)
    assert (await before.reserve_spend(_reserve(principal, "old", 60, cap))).ok
    await before.commit_spend(CommitLayers(purchase_id="old", amount=Money.usd(60), layers=[cap]))
    after = books_type(stack.client, stack.task_queue, authority=_signer(), books=True)
    budget = budget.model_copy(update={"limit": Money.usd(100)})
    for pid, usd in (("new-50", 50), ("new-30", 30)):
        out = await after.reserve_spend(_reserve(principal, pid, usd, cap, budget))
        if out.ok:
            await after.commit_spend(
                CommitLayers(purchase_id=pid, amount=Money.usd(usd), layers=[cap, budget])
            )
    ledger = await after._ledger_view(cap.ledger_id)
    book = await after._book_view(principal, cap.ledger_id)
    return sum(v.committed.amount for v in (ledger, book) if v is not None)


async def test_a_layer_with_a_ledger_keeps_it(spend_stack: SpendStack) -> None:
    assert await _upgraded_mid_month(spend_stack, SpendActivities) == Money.usd(90).amount  # 60 + 30


async def test_the_check_catches_books_that_ignore_existing_ledgers(spend_stack: SpendStack) -> None:
    assert await _upgraded_mid_month(spend_stack, BooksForEveryLayer) > CAP  # 60 + 50 + 30 over the cap


# ---- forged and malformed calls are refused before history ----------------------------------------


async def test_forged_and_malformed_calls_change_nothing(spend_stack: SpendStack, client: Client) -> None:
    spend, principal = spend_stack.spend, new_principal()
    cap, _, _ = _layers(principal)
    assert (await spend.reserve_spend(_reserve(principal, "a", 10, cap))).ok
    books_id = books_workflow_id(principal)
    handle = client.get_workflow_handle(books_id)
    accepted = await _events(client, books_id)
    start = LedgerStart(ledger_id=cap.ledger_id, kind="monthly", limit=Money.usd(100), principal_id=principal)
    signer = _signer()

    def reserve(amount: int) -> BooksReserve:
        return BooksReserve.model_construct(
            purchase_id="b", amount=Money.model_construct(amount=amount, currency="usd"),
            hold_seconds=60, requested_by=None, layers=[BookReserve(start=start)], proof=None,
        )  # fmt: skip

    other = books_workflow_id(new_principal())
    calls = {
        "no proof": reserve(500),
        "another principal's proof": signer.signed(reserve(500), ProofKind.BOOKS_RESERVE, other),
        "a commit's proof": signer.signed(reserve(500), ProofKind.BOOKS_COMMIT, books_id),
        "negative": signer.signed(reserve(-500), ProofKind.BOOKS_RESERVE, books_id),
        "zero": signer.signed(reserve(0), ProofKind.BOOKS_RESERVE, books_id),
        "huge": signer.signed(reserve(MAX_MINOR_UNITS + 1), ProofKind.BOOKS_RESERVE, books_id),
        "euro": signer.signed(
            reserve(500).model_copy(update={"amount": Money(amount=500, currency="eur")}),
            ProofKind.BOOKS_RESERVE,
            books_id,
        ),
    }
    codes = {}
    for what, call in calls.items():
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await handle.execute_update("reserve_all", call)
        cause = info.value.cause
        codes[what] = cause.type if isinstance(cause, ApplicationError) else repr(cause)
    # amounts out of range are refused by the model as it is read, or by the books: before history
    assert {
        what: codes[what] for what in ("no proof", "another principal's proof", "a commit's proof", "euro")
    } == {
        "no proof": "AUTHORITY_INVALID",
        "another principal's proof": "AUTHORITY_INVALID",
        "a commit's proof": "AUTHORITY_INVALID",
        "euro": "CURRENCY_MISMATCH",
    }
    print("refusals:", codes)
    commit = BooksSettle(purchase_id="a", ledger_ids=[cap.ledger_id], amount=Money.usd(11))  # > reserved
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update("commit_all", signer.signed(commit, ProofKind.BOOKS_COMMIT, books_id))
    assert await _events(client, books_id) == accepted
    view = await spend.ledger_view(cap.ledger_id)
    assert view is not None and view.reserved == Money.usd(10) and view.committed == Money.usd(0)


async def test_books_started_without_the_proof_fail_and_never_count(
    spend_stack: SpendStack, client: Client
) -> None:
    principal = new_principal()
    books_id = books_workflow_id(principal)
    handle = await client.start_workflow(
        "SpendBooks",
        BooksStart(principal_id=principal),
        id=books_id,
        task_queue=spend_stack.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    cap, _, _ = _layers(principal)  # the worker's reservation restarts them properly
    assert (await spend_stack.spend.reserve_spend(_reserve(principal, "a", 90, cap))).ok
    assert not (await spend_stack.spend.reserve_spend(_reserve(principal, "b", 20, cap))).ok


# ---- time: closed months, continue-as-new -----------------------------------------------------------


async def test_a_month_past_its_grace_is_closed_in_the_books(spend_stack: SpendStack) -> None:
    principal = new_principal()
    past = LedgerLayer(
        ledger_id=monthly_ledger_id(principal, "cloud", datetime(2020, 1, 15, tzinfo=UTC)),
        limit=Money.usd(100),
        kind="monthly",
    )
    with pytest.raises(ApplicationError) as info:
        await spend_stack.spend.reserve_spend(_reserve(principal, "late", 10, past))
    assert info.value.type == "LEDGER_CLOSED"
    assert await spend_stack.spend.ledger_view(past.ledger_id) is None


async def test_books_continue_as_new_and_keep_every_purchase(client: Client, tmp_path: Path) -> None:
    principal = new_principal()
    cap, agent, _ = _layers(principal)
    async with spend_worker(client, tmp_path, continue_as_new_after_events=100) as s:
        for i in range(40):
            assert (await s.spend.reserve_spend(_reserve(principal, f"p{i}", 1, cap, agent))).ok
            await s.spend.commit_spend(
                CommitLayers(purchase_id=f"p{i}", amount=Money.usd(1), layers=[cap, agent])
            )
        books = await s.spend.books_view(principal)
        # an old purchase replayed after the continue-as-new counts once, and cannot reserve again
        await s.spend.commit_spend(CommitLayers(purchase_id="p0", amount=Money.usd(1), layers=[cap, agent]))
        again = await s.spend.reserve_spend(_reserve(principal, "p0", 1, cap, agent))
        view = await s.spend.ledger_view(cap.ledger_id)
    assert books is not None and books.generation >= 2
    assert again.ok and again.outcomes[0].status == "already_committed"
    assert view is not None and view.committed == Money.usd(40) and view.purchases_committed == 40


class AnyWorkflowIsALedger(SpendActivities):
    """WRONG ON PURPOSE: any workflow under the layer's id makes it a ledger's, also a forged one."""

    async def _ledger_exists(self, ledger_id: str) -> bool:
        return await _exists(self._client, ledger_id)


async def _forged_ledger_then_buy(stack: SpendStack, routing: type[SpendActivities]) -> bool:
    """USD 60 committed in the books; a client without the key starts a `SpendLedger` under the cap's
    id; a worker process started after that buys 50. True if the purchase got through."""
    principal = new_principal()
    cap, _, _ = _layers(principal)
    assert (await stack.spend.reserve_spend(_reserve(principal, "first", 60, cap))).ok
    await stack.spend.commit_spend(CommitLayers(purchase_id="first", amount=Money.usd(60), layers=[cap]))
    start = LedgerStart(ledger_id=cap.ledger_id, kind="monthly", limit=Money.usd(100_000))
    forged = await stack.client.start_workflow(
        "SpendLedger", start, id=cap.ledger_id, task_queue=stack.task_queue
    )
    with pytest.raises(WorkflowFailureError):
        await forged.result()
    later = routing(stack.client, stack.task_queue, authority=_signer(), books=True)  # a fresh process
    try:
        return (await later.reserve_spend(_reserve(principal, "second", 50, cap))).ok
    except ApplicationError:
        return False


async def test_a_forged_ledger_does_not_pull_a_layer_out_of_the_books(spend_stack: SpendStack) -> None:
    assert not await _forged_ledger_then_buy(spend_stack, SpendActivities)


async def test_the_check_catches_routing_that_trusts_any_workflow(spend_stack: SpendStack) -> None:
    assert await _forged_ledger_then_buy(spend_stack, AnyWorkflowIsALedger)
