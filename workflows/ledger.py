"""`SpendLedgerWorkflow`: one entity workflow per spend layer (monthly cap or budget), holding one
`workflows.book.Book` (the layer's rules and state; `SpendBooksWorkflow` holds many).

Invariant at every instant: committed + reserved ≤ effective limit. The handlers are synchronous, so
each update's check and state change happen in one step with no await in between: two concurrent
reservations can never both see the same headroom. Validators reject malformed input (currency,
amounts, ids) and any change without the worker's authority proof (`workflows.authority`): a Temporal
client without the server-side key cannot reserve, commit, release, override or set a limit. A first
run whose start carries no valid proof fails at once (its limit never counts); only a continue-as-new
carries state.

The run loop does the slow work outside the handlers: it expires reservations by timer, sends alerts
and audit events through activities, continues as new long before the history gets large (carrying
every settled purchase id), and finishes a monthly ledger 35 days after its month ends.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.authority import ProofKind, change_of
    from models.ledger import (
        CommitSpend,
        LedgerStart,
        LedgerState,
        LedgerView,
        ReleaseSpend,
        ReserveOutcome,
        ReserveSpend,
        SetLedgerLimit,
        SettleOutcome,
    )
    from models.money import Money
    from workflows import authority
    from workflows.book import Book, reject

ACTIVITY_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=60))


async def send_alerts(book: Book) -> None:
    """Send the book's pending alerts, each with its audit event (activities; ids make them once)."""
    while book.s.pending_alerts:
        threshold = book.s.pending_alerts[0]
        alert, event = book.alert(threshold)
        await workflow.execute_activity(
            "spend_alert",
            alert,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=ACTIVITY_RETRY,
            summary=f"alert: {threshold}% of the limit",
        )
        await workflow.execute_activity(
            "record_audit",
            event,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=ACTIVITY_RETRY,
            summary=f"audit {event.action}",
        )
        book.s.pending_alerts.pop(0)


@workflow.defn(name="SpendLedger")
class SpendLedgerWorkflow:
    @workflow.init
    def __init__(self, start: LedgerStart) -> None:
        self._start = start
        #: a first run started without the worker's proof: it fails before anything counts
        carried = authority.from_own_continue_as_new()
        self._forged = (
            not carried
            and authority.required()
            and not authority.verify(
                start.proof,
                kind=ProofKind.LEDGER_START,
                target=workflow.info().workflow_id,
                change=change_of(start, exclude=frozenset({"state"})),
                issued_near=workflow.info().workflow_start_time,
            )
        )
        if self._forged or (start.state is not None and not carried):
            # state is only ever carried by this workflow's own continue-as-new
            start = start.model_copy(
                update={"state": None, "limit": Money(amount=0, currency=start.limit.currency)}
            )
            self._start = start
        self._book = Book(start.model_copy(update={"state": None, "proof": None}), start.state)
        self._updates_this_run = 0
        self._armed: datetime | None = None
        self._closed = False

    @property
    def _s(self) -> LedgerState:
        return self._book.s

    def _close_at(self) -> datetime | None:
        return self._book.close_at()

    def _touch(self) -> None:
        self._updates_this_run += 1

    def _check_proof(
        self, kind: ProofKind, req: ReserveSpend | CommitSpend | ReleaseSpend | SetLedgerLimit
    ) -> None:
        if self._forged or not authority.verify(
            req.proof, kind=kind, target=self._start.ledger_id, change=change_of(req)
        ):
            raise reject("AUTHORITY_INVALID", f"{kind} on {self._start.ledger_id} without a valid proof")

    # ---- updates --------------------------------------------------------------------------------

    @workflow.update(name="reserve")
    def reserve(self, req: ReserveSpend) -> ReserveOutcome:
        """Hold the amount if it fits; all checks and the state change happen with no await."""
        self._touch()
        return self._book.reserve(req)

    @reserve.validator
    def _validate_reserve(self, req: ReserveSpend) -> None:
        self._check_proof(ProofKind.LEDGER_RESERVE, req)
        self._book.check_reserve(req)

    @workflow.update(name="commit")
    def commit(self, req: CommitSpend) -> SettleOutcome:
        """Record what was charged (≤ the reservation) and free the rest of the hold."""
        self._touch()
        return self._book.commit(req)

    @commit.validator
    def _validate_commit(self, req: CommitSpend) -> None:
        self._check_proof(ProofKind.LEDGER_COMMIT, req)
        self._book.check_currency(req.amount)

    @workflow.update(name="release")
    def release(self, req: ReleaseSpend) -> SettleOutcome:
        """Give the hold back. Unknown ids are tombstoned too, so a late reserve cannot revive them."""
        self._touch()
        return self._book.release(req)

    @release.validator
    def _validate_release(self, req: ReleaseSpend) -> None:
        self._check_proof(ProofKind.LEDGER_RELEASE, req)

    @workflow.update(name="set_limit")
    def set_limit(self, req: SetLedgerLimit) -> LedgerView:
        """Apply a newer base limit. Lowering it below what is committed blocks new reservations only."""
        self._touch()
        self._book.touch()
        self._book.adopt_limit(req.limit, req.version)
        return self.view()

    @set_limit.validator
    def _validate_set_limit(self, req: SetLedgerLimit) -> None:
        self._check_proof(ProofKind.LEDGER_SET_LIMIT, req)
        self._book.check_currency(req.limit)

    @workflow.query(name="view")
    def view(self) -> LedgerView:
        return self._book.view(closed=self._closed)

    # ---- time -----------------------------------------------------------------------------------

    def _next_deadline(self) -> datetime | None:
        return self._book.next_deadline()

    def _continue_due(self) -> bool:
        info = workflow.info()
        return (
            info.get_current_history_length() >= self._start.continue_as_new_after_events
            or self._updates_this_run >= self._start.continue_as_new_after_updates
            or info.is_continue_as_new_suggested()
        )

    def _wake(self) -> bool:
        deadline = self._next_deadline()
        earlier = deadline is not None and (self._armed is None or deadline < self._armed)
        return bool(self._s.pending_alerts) or self._continue_due() or earlier

    @workflow.run
    async def run(self, start: LedgerStart) -> LedgerView:
        if self._forged:
            raise ApplicationError(
                f"AUTHORITY_INVALID: ledger {start.ledger_id} started without the worker's proof",
                type="AUTHORITY_INVALID",
                non_retryable=True,
            )
        workflow.set_current_details(f"spend ledger {start.ledger_id} ({start.kind})")
        while True:
            deadline = self._next_deadline()
            self._armed = deadline
            timeout = None if deadline is None else max(deadline - workflow.now(), timedelta(0))
            try:
                await workflow.wait_condition(self._wake, timeout=timeout, timeout_summary="next expiry")
            except TimeoutError:
                pass
            self._book.expire_due()
            await send_alerts(self._book)
            if self._book.due_to_close():
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._closed = True
                return self.view()
            if self._continue_due():
                await workflow.wait_condition(workflow.all_handlers_finished)
                state = self._book.snapshot()
                state.generation += 1
                workflow.continue_as_new(start.model_copy(update={"state": state}))
