"""Spend books: one entity per principal holding every layer of its purchases as a *book*.

A book is what a `SpendLedger` workflow holds for one layer (same id, same `LedgerState`, same view);
`SpendBooks` (`books-<principal id>`) holds all of a principal's and checks and holds every layer of a
purchase in one synchronous update, so a purchase is all or nothing without a roll-back across
entities. A layer whose `SpendLedger` already exists keeps it (`activities.spend` routes per layer).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from models.ledger import (
    MAX_HOLD_SECONDS,
    MAX_LAYERS,
    LedgerStart,
    LedgerState,
    LedgerView,
    PurchaseId,
    ReserveOutcome,
    SettleOutcome,
)
from models.money import Money

#: a principal's books hold at most this many books (months, agents, budgets) at once
MAX_BOOKS = 2_000


def books_workflow_id(principal_id: str) -> str:
    """`books-<principal id>`: the one spend entity of a principal."""
    if not principal_id or "-" in principal_id:
        raise ValueError("a principal id is non-empty and has no '-'")
    return f"books-{principal_id}"


class BookState(BaseModel):
    """One book as the books carry it across continue-as-new: how it was opened and what it holds."""

    start: LedgerStart
    state: LedgerState


class ClosedBook(BaseModel):
    """A book dropped after its close time: when, and its last view (without reservations: none)."""

    at: datetime
    view: LedgerView


class BooksState(BaseModel):
    books: dict[str, BookState] = Field(default_factory=dict)
    #: books dropped after their close time: a late reserve is refused, never opened afresh
    closed: dict[str, ClosedBook] = Field(default_factory=dict)
    generation: int = 0


class BooksStart(BaseModel):
    """Input of `SpendBooksWorkflow`. Only a continue-as-new carries `state`."""

    principal_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:@+=]+$")
    continue_as_new_after_events: int = Field(default=4000, ge=100, le=10_000)
    continue_as_new_after_updates: int = Field(default=1000, ge=10, le=1900)
    state: BooksState | None = None
    proof: str | None = Field(default=None, max_length=200)


class BookReserve(BaseModel):
    """One layer of a reservation: the book (opened from `start` if the books have none of that id),
    the principal's current limit for it, and whether the human's override applies to it."""

    model_config = ConfigDict(extra="forbid")

    start: LedgerStart
    limit: Money | None = None
    limit_version: int | None = Field(default=None, ge=0)
    override_approval_id: str | None = Field(default=None, max_length=300)


class BooksReserve(BaseModel):
    """Hold `amount` for `purchase_id` on every layer, in order, all or nothing."""

    model_config = ConfigDict(extra="forbid")

    purchase_id: PurchaseId
    amount: Money
    hold_seconds: int = Field(default=3600, ge=1, le=MAX_HOLD_SECONDS)
    requested_by: str | None = Field(default=None, max_length=300)
    layers: list[BookReserve] = Field(min_length=1, max_length=MAX_LAYERS)
    proof: str | None = Field(default=None, max_length=200)


class BooksReserveOutcome(BaseModel):
    """Every layer's outcome up to the first that refused (`refused`, its index); nothing is held then."""

    refused: int | None = None
    outcomes: list[ReserveOutcome] = Field(default_factory=list)


class BooksSettle(BaseModel):
    """Commit (with `amount`) or release a purchase on the named books. `forget` rolls back a
    reservation so the same purchase may reserve again (only the one held until `held_until`)."""

    model_config = ConfigDict(extra="forbid")

    purchase_id: PurchaseId
    ledger_ids: list[str] = Field(min_length=1, max_length=MAX_LAYERS)
    amount: Money | None = None
    forget: bool = False
    held_until: datetime | None = None
    proof: str | None = Field(default=None, max_length=200)


class BooksSettleOutcome(BaseModel):
    #: per named book; None where the books have no such book (nothing was ever reserved there)
    outcomes: list[SettleOutcome | None] = Field(default_factory=list)


class BooksSetLimit(BaseModel):
    """A newer base limit for one book (opened from `start` if absent, so the month starts with it)."""

    model_config = ConfigDict(extra="forbid")

    start: LedgerStart
    limit: Money
    version: int = Field(ge=0)
    proof: str | None = Field(default=None, max_length=200)


class BooksView(BaseModel):
    principal_id: str
    books: list[LedgerView] = Field(default_factory=list)
    #: the last views of the books dropped after their close time (kept `CLOSED_KEPT`)
    closed: list[LedgerView] = Field(default_factory=list)
    generation: int = 0
