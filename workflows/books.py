"""`SpendBooksWorkflow`: one entity per principal holding every spend layer of its purchases as a book
(`workflows.book.Book`: the same rules and state a `SpendLedger` holds for one layer).

A purchase's layers (the month at the provider, the agent's month and hour, the session's budget) are
checked and held in one synchronous update, `reserve_all`: every layer fits or none is held, with no
roll-back across entities and one workflow task instead of one per layer. `commit_all` and
`release_all` settle a purchase on every layer the same way; their validators check every book first,
so a refused commit changes nothing. Validators also refuse any change without the worker's authority
proof for this very workflow, and a first run whose start carries none fails before anything counts.

The run loop expires reservations by timer, sends each book's alerts, drops a book once its close time
has passed with nothing held (its id is kept as closed, so a late reservation is refused rather than
counted afresh), and continues as new long before the history gets large, carrying every book.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.authority import ProofKind, change_of
    from models.books import (
        MAX_BOOKS,
        BookReserve,
        BooksReserve,
        BooksReserveOutcome,
        BooksSetLimit,
        BooksSettle,
        BooksSettleOutcome,
        BooksStart,
        BooksState,
        BookState,
        BooksView,
        ClosedBook,
    )
    from models.ledger import (
        MONTHLY_GRACE,
        CommitSpend,
        LedgerStart,
        LedgerView,
        ReleaseSpend,
        ReserveSpend,
        SettleOutcome,
        month_end,
    )
    from workflows import authority
    from workflows.book import Book, reject
    from workflows.ledger import send_alerts

#: a closed book's id and last view are kept this long (a session or request never outlives it; a
#: monthly book's month refuses reservations by its date anyway)
CLOSED_KEPT = timedelta(days=400)
_HELD = ("reserved", "already_reserved")


@workflow.defn(name="SpendBooks")
class SpendBooksWorkflow:
    @workflow.init
    def __init__(self, start: BooksStart) -> None:
        self._start = start
        carried = authority.from_own_continue_as_new()
        self._forged = not carried and not authority.verify(
            start.proof,
            kind=ProofKind.BOOKS_START,
            target=workflow.info().workflow_id,
            change=change_of(start, exclude=frozenset({"state"})),
            issued_near=workflow.info().workflow_start_time,
        )
        state = start.state if carried and not self._forged else None
        self._state = state or BooksState()
        self._books = {i: Book(b.start, b.state) for i, b in self._state.books.items()}
        self._closed = dict(self._state.closed)
        self._updates_this_run = 0
        self._armed: datetime | None = None

    # ---- checks ---------------------------------------------------------------------------------

    def _check_proof(self, kind: ProofKind, req: BooksReserve | BooksSettle | BooksSetLimit) -> None:
        target = workflow.info().workflow_id
        if self._forged or not authority.verify(req.proof, kind=kind, target=target, change=change_of(req)):
            raise reject("AUTHORITY_INVALID", f"{kind} on {target} without a valid proof")

    def _check_open(self, start: LedgerStart) -> Book:
        """The book for `start` (a new one, not kept, if the books have none): refused if closed."""
        ledger_id = start.ledger_id
        month_over = (
            start.kind in ("monthly", "agent_monthly")
            and start.month is not None
            and workflow.now() >= month_end(start.month) + MONTHLY_GRACE
        )
        if ledger_id in self._closed or (ledger_id not in self._books and month_over):
            raise reject("LEDGER_CLOSED", f"ledger {ledger_id} has finished")
        book = self._books.get(ledger_id)
        if book is not None:
            return book
        if start.state is not None or start.proof is not None:
            raise reject("INVALID_REQUEST", "a book opens from its start alone")
        if len(self._books) >= MAX_BOOKS:
            raise reject("INVALID_REQUEST", f"at most {MAX_BOOKS} books are open at once")
        return Book(start)

    def _book(self, start: LedgerStart) -> Book:
        book = self._books.get(start.ledger_id)
        if book is None:
            book = self._books[start.ledger_id] = Book(start)
        return book

    @staticmethod
    def _spend(req: BooksReserve, layer: BookReserve) -> ReserveSpend:
        return ReserveSpend(
            purchase_id=req.purchase_id,
            amount=req.amount,
            hold_seconds=req.hold_seconds,
            override_approval_id=layer.override_approval_id,
            requested_by=req.requested_by,
            limit=layer.limit,
            limit_version=layer.limit_version,
        )

    @staticmethod
    def _distinct(ids: list[str]) -> None:
        if len(set(ids)) != len(ids):
            raise reject("INVALID_REQUEST", "a layer is named twice")

    # ---- updates --------------------------------------------------------------------------------

    @workflow.update(name="reserve_all")
    def reserve_all(self, req: BooksReserve) -> BooksReserveOutcome:
        """Hold the purchase on every layer in order, or on none: the first refusal gives back what this
        purchase holds on the layers before it (so it may retry, e.g. after a human's approval)."""
        self._updates_this_run += 1
        outcomes = []
        for i, layer in enumerate(req.layers):
            book = self._book(layer.start)
            out = book.reserve(self._spend(req, layer))
            outcomes.append(out)
            if out.status in (*_HELD, "already_committed"):
                continue
            pid = req.purchase_id
            for held, before in zip(req.layers[:i], outcomes, strict=False):
                if before.status in _HELD:
                    back = ReleaseSpend(purchase_id=pid, forget=True, held_until=before.expires_at)
                    self._books[held.start.ledger_id].release(back)
            return BooksReserveOutcome(refused=i, outcomes=outcomes)
        return BooksReserveOutcome(outcomes=outcomes)

    @reserve_all.validator
    def _validate_reserve_all(self, req: BooksReserve) -> None:
        self._check_proof(ProofKind.BOOKS_RESERVE, req)
        self._distinct([layer.start.ledger_id for layer in req.layers])
        for layer in req.layers:
            self._check_open(layer.start).check_reserve(self._spend(req, layer))

    @workflow.update(name="commit_all")
    def commit_all(self, req: BooksSettle) -> BooksSettleOutcome:
        """Record what was charged on every named book (each holds the purchase: checked first)."""
        self._updates_this_run += 1
        assert req.amount is not None  # the validator refuses a commit without one
        commit = CommitSpend(purchase_id=req.purchase_id, amount=req.amount)
        outcomes: list[SettleOutcome | None] = [self._books[i].commit(commit) for i in req.ledger_ids]
        return BooksSettleOutcome(outcomes=outcomes)

    @commit_all.validator
    def _validate_commit_all(self, req: BooksSettle) -> None:
        self._check_proof(ProofKind.BOOKS_COMMIT, req)
        self._distinct(req.ledger_ids)
        if req.amount is None or req.forget:
            raise reject("INVALID_REQUEST", "a commit names the amount charged")
        commit = CommitSpend(purchase_id=req.purchase_id, amount=req.amount)
        for ledger_id in req.ledger_ids:
            book = self._books.get(ledger_id)
            if book is None:
                nothing = f"purchase {req.purchase_id} holds nothing on {ledger_id}"
                raise reject("RESERVATION_NOT_FOUND", nothing)
            book.check_currency(req.amount)
            refusal = book.commit_refusal(commit)
            if refusal is not None:
                raise refusal

    @workflow.update(name="release_all")
    def release_all(self, req: BooksSettle) -> BooksSettleOutcome:
        """Give the purchase back on every named book (a book never opened has nothing to give)."""
        self._updates_this_run += 1
        release = ReleaseSpend(purchase_id=req.purchase_id, forget=req.forget, held_until=req.held_until)
        outcomes = [self._books[i].release(release) if i in self._books else None for i in req.ledger_ids]
        return BooksSettleOutcome(outcomes=outcomes)

    @release_all.validator
    def _validate_release_all(self, req: BooksSettle) -> None:
        self._check_proof(ProofKind.BOOKS_RELEASE, req)
        self._distinct(req.ledger_ids)
        if req.amount is not None:
            raise reject("INVALID_REQUEST", "a release names no amount")

    @workflow.update(name="set_limit")
    def set_limit(self, req: BooksSetLimit) -> LedgerView:
        """Apply a newer base limit to one book (opening it, so the month starts with it)."""
        self._updates_this_run += 1
        book = self._book(req.start)
        book.touch()
        book.adopt_limit(req.limit, req.version)
        return book.view()

    @set_limit.validator
    def _validate_set_limit(self, req: BooksSetLimit) -> None:
        self._check_proof(ProofKind.BOOKS_SET_LIMIT, req)
        self._check_open(req.start).check_currency(req.limit)

    # ---- reads ----------------------------------------------------------------------------------

    @workflow.query(name="view")
    def view(self, ledger_id: str) -> LedgerView | None:
        book = self._books.get(ledger_id)
        if book is not None:
            return book.view()
        closed = self._closed.get(ledger_id)
        return closed.view if closed is not None else None

    @workflow.query(name="books")
    def books(self) -> BooksView:
        return BooksView(
            principal_id=self._start.principal_id,
            books=[self._books[i].view() for i in sorted(self._books)],
            closed=[self._closed[i].view for i in sorted(self._closed)],
            generation=self._state.generation,
        )

    # ---- time -----------------------------------------------------------------------------------

    def _next_deadline(self) -> datetime | None:
        times = [t for t in (b.next_deadline() for b in self._books.values()) if t is not None]
        return min(times) if times else None

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
        alerts = any(b.s.pending_alerts for b in self._books.values())
        return alerts or self._continue_due() or earlier

    def _drop_closed(self) -> None:
        now = workflow.now()
        for ledger_id, book in list(self._books.items()):
            if book.due_to_close():
                del self._books[ledger_id]
                self._closed[ledger_id] = ClosedBook(at=now, view=book.view(closed=True))
        for ledger_id, closed in list(self._closed.items()):
            if closed.at + CLOSED_KEPT <= now:
                del self._closed[ledger_id]

    @workflow.run
    async def run(self, start: BooksStart) -> BooksView:
        if self._forged:
            raise ApplicationError(
                f"AUTHORITY_INVALID: books of {start.principal_id} started without the worker's proof",
                type="AUTHORITY_INVALID",
                non_retryable=True,
            )
        workflow.set_current_details(f"spend books of {start.principal_id}")
        while True:
            deadline = self._next_deadline()
            self._armed = deadline
            timeout = None if deadline is None else max(deadline - workflow.now(), timedelta(0))
            try:
                await workflow.wait_condition(self._wake, timeout=timeout, timeout_summary="next expiry")
            except TimeoutError:
                pass
            for book in list(self._books.values()):
                book.expire_due()
                await send_alerts(book)
            self._drop_closed()
            if self._continue_due():
                await workflow.wait_condition(workflow.all_handlers_finished)
                books = {i: BookState(start=b.start, state=b.snapshot()) for i, b in self._books.items()}
                state = BooksState(books=books, closed=self._closed, generation=self._state.generation + 1)
                workflow.continue_as_new(start.model_copy(update={"state": state}))
