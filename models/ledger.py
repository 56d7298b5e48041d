"""Spend ledgers: the inputs and outputs of the per-layer ledger entity and the layered spend activities.

A *layer* is one ledger a purchase must fit in: the principal's monthly per-provider cap
(`ledger-<principal id>-<provider>-<yyyy-mm>`), a budget under it (`budget-<scope>-<id>`), the acting
agent's month over every provider (`agent-ledger-<principal id>-<agent>-<yyyy-mm>`), or the agent's
purchases per rolling hour (`velocity-<principal id>-<agent>`, a ledger that counts purchases, not money).
Amounts are integer minor units; every amount of one ledger has the ledger's currency.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.money import Money

LedgerKind = Literal["monthly", "budget", "agent_monthly", "velocity"]
#: business ids go into workflow IDs: printable, no spaces, no emails
PurchaseId = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@/+=-]+$")]
#: a reservation is held at most this long unless committed (the payment token expires with it)
MAX_HOLD_SECONDS = 7 * 86_400
#: monthly ledgers stay open this long after their month ends, for late commits and reconciliation
MONTHLY_GRACE = timedelta(days=35)
#: budget ledgers finish after this long without any operation and with nothing reserved
BUDGET_IDLE_CLOSE_SECONDS = 30 * 86_400
#: percentages of the limit at which the principal is told, once each per ledger
ALERT_THRESHOLDS = (50, 80, 100)

#: layers of one purchase: the cap, a budget per session of the chain and the request's, and two per
#: agent of the chain (every agent's limits bind what its delegates buy)
MAX_LAYERS = 32
#: a velocity ledger counts the purchases reserved or committed in this rolling window
VELOCITY_WINDOW = timedelta(hours=1)
#: the layer kinds a human's one-time `spend_limit` approval may lift; agent layers never are
OVERRIDABLE_KINDS: frozenset[str] = frozenset({"monthly", "budget"})
#: the stable error code when a layer of this kind has no room (monthly: the human is asked first)
REFUSAL_CODES: dict[str, str] = {
    "monthly": "SPEND_LIMIT_REACHED",
    "budget": "BUDGET_EXCEEDED",
    "agent_monthly": "AGENT_MONTHLY_LIMIT_EXCEEDED",
    "velocity": "VELOCITY_LIMIT_EXCEEDED",
}

_MONTHLY_ID = re.compile(r"^ledger-(?P<principal>[^-]+)-(?P<provider>.+)-(?P<month>\d{4}-\d{2})$")
_AGENT_ID = re.compile(r"^agent-ledger-(?P<principal>[^-]+)-(?P<agent>.+)-(?P<month>\d{4}-\d{2})$")
_VELOCITY_ID = re.compile(r"^velocity-(?P<principal>[^-]+)-(?P<agent>.+)$")


def month_of(when: datetime) -> str:
    """The UTC calendar month `yyyy-mm` of an aware datetime."""
    if when.tzinfo is None:
        raise ValueError("naive datetime: times are timezone-aware UTC")
    return when.astimezone(UTC).strftime("%Y-%m")


def monthly_ledger_id(principal_id: str, provider: str, when: datetime) -> str:
    """`ledger-<principal id>-<provider>-<yyyy-mm>` for the UTC month containing `when`."""
    if not principal_id or "-" in principal_id:
        raise ValueError("a principal id is non-empty and has no '-'")
    return f"ledger-{principal_id}-{provider}-{month_of(when)}"


def agent_ledger_id(principal_id: str, agent: str, when: datetime) -> str:
    """`agent-ledger-<principal id>-<agent>-<yyyy-mm>`: one agent's spend over every provider."""
    if not principal_id or "-" in principal_id:
        raise ValueError("a principal id is non-empty and has no '-'")
    return f"agent-ledger-{principal_id}-{agent}-{month_of(when)}"


def velocity_ledger_id(principal_id: str, agent: str) -> str:
    """`velocity-<principal id>-<agent>`: one agent's purchases per rolling hour (no month: the window
    rolls over month ends)."""
    if not principal_id or "-" in principal_id:
        raise ValueError("a principal id is non-empty and has no '-'")
    return f"velocity-{principal_id}-{agent}"


class AgentLedgerName(BaseModel):
    principal_id: str
    agent: str
    month: str | None = None


def parse_agent_ledger_id(ledger_id: str) -> AgentLedgerName | None:
    """The parts of an agent ledger id (monthly or velocity), or None when the id is not one."""
    m = _AGENT_ID.match(ledger_id)
    if m is not None:
        return AgentLedgerName(principal_id=m["principal"], agent=m["agent"], month=m["month"])
    v = _VELOCITY_ID.match(ledger_id)
    if v is not None:
        return AgentLedgerName(principal_id=v["principal"], agent=v["agent"])
    return None


def budget_ledger_id(scope: str, scope_id: str) -> str:
    """`budget-<scope>-<id>`, e.g. `budget-session-<session id>` or `budget-request-<request id>`."""
    return f"budget-{scope}-{scope_id}"


class MonthlyLedgerName(BaseModel):
    principal_id: str
    provider: str
    month: str


def parse_monthly_ledger_id(ledger_id: str) -> MonthlyLedgerName | None:
    """The parts of a monthly ledger id, or None when the id is not one."""
    m = _MONTHLY_ID.match(ledger_id)
    if m is None:
        return None
    return MonthlyLedgerName(principal_id=m["principal"], provider=m["provider"], month=m["month"])


def month_end(month: str) -> datetime:
    """The first instant (UTC) after the month `yyyy-mm`."""
    year, mon = (int(p) for p in month.split("-"))
    return datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=UTC)


class LedgerLayer(BaseModel):
    """One ledger a purchase must fit in. For `monthly`, `agent_monthly` and `velocity` layers the
    limit is taken from the principal's limits (`limit` here only names the currency)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ledger_id: str = Field(min_length=1, max_length=200)
    limit: Money
    kind: LedgerKind


def agent_layers(
    principal_id: str, agent: str, when: datetime, currency: str, *, new_purchase: bool = True
) -> list[LedgerLayer]:
    """The acting agent's two layers under the cap: its month (over every provider) and its purchases
    per rolling hour. Their limits come from the principal's limits (`limit` only names the currency);
    `reserve_spend` skips the velocity layer of an agent without a velocity limit. A renewal
    (`new_purchase=False`) counts in the month of its due date only: it is no new purchase, so no
    velocity layer (docs/decisions.md, "Renewals under the agent layers")."""
    placeholder = Money(amount=10_000, currency=currency)
    month = LedgerLayer(
        ledger_id=agent_ledger_id(principal_id, agent, when), limit=placeholder, kind="agent_monthly"
    )
    if not new_purchase:
        return [month]
    return [
        month,
        LedgerLayer(ledger_id=velocity_ledger_id(principal_id, agent), limit=placeholder, kind="velocity"),
    ]


class ReserveSpend(BaseModel):
    """Hold `amount` for `purchase_id` until committed, released or `hold_seconds` pass."""

    model_config = ConfigDict(extra="forbid")

    purchase_id: PurchaseId
    amount: Money
    hold_seconds: int = Field(default=3600, ge=1, le=MAX_HOLD_SECONDS)
    #: the approval id (`<workflow id>.spend_limit`) of a human's one-time approval of this purchase
    override_approval_id: str | None = Field(default=None, max_length=300)
    #: the workflow whose activity asked: an override must be that workflow's own approval
    requested_by: str | None = Field(default=None, max_length=300)
    #: the principal's current limit for this layer (and its version): a ledger holding an older one
    #: adopts it before checking, so a change reaches every ledger it applies to on its next purchase
    limit: Money | None = None
    limit_version: int | None = Field(default=None, ge=0)
    #: the worker's authority proof over this reservation (models.authority)
    proof: str | None = Field(default=None, max_length=200)


class CommitSpend(BaseModel):
    """Turn the reservation into spend. `amount` (what was actually charged) ≤ the reservation."""

    model_config = ConfigDict(extra="forbid")

    purchase_id: PurchaseId
    amount: Money
    proof: str | None = Field(default=None, max_length=200)


class ReleaseSpend(BaseModel):
    """Give the reservation back. The purchase id is then settled and can never be reserved again,
    unless `forget` (used to roll back a layered reservation so the same purchase may retry)."""

    model_config = ConfigDict(extra="forbid")

    purchase_id: PurchaseId
    forget: bool = False
    #: with `forget`: only the reservation that expires at this instant (the one this caller made), so
    #: a replayed roll-back can never drop a later reservation of the same purchase
    held_until: datetime | None = None
    proof: str | None = Field(default=None, max_length=200)


class SetLedgerLimit(BaseModel):
    """A new base limit; applied only if `version` is newer than the ledger's (pushes may race)."""

    model_config = ConfigDict(extra="forbid")

    limit: Money
    version: int = Field(ge=0)
    proof: str | None = Field(default=None, max_length=200)


ReserveStatus = Literal["reserved", "already_reserved", "already_committed", "already_released", "over_limit"]


class ReserveOutcome(BaseModel):
    status: ReserveStatus
    #: the base limit (what the human set); overrides for single purchases come on top
    limit: Money
    committed: Money
    reserved: Money
    remaining: Money
    ledger_id: str = ""
    effective_limit: Money | None = None
    #: when this purchase's reservation lapses: the payment token must not outlive it
    expires_at: datetime | None = None


SettleStatus = Literal["committed", "already_committed", "released", "already_released", "not_reserved"]


class SettleOutcome(BaseModel):
    """Result of `commit` and `release` on one ledger."""

    status: SettleStatus
    limit: Money
    committed: Money
    reserved: Money
    remaining: Money


class ReservationView(BaseModel):
    purchase_id: str
    amount: Money
    reserved_at: datetime
    expires_at: datetime
    override_approval_id: str | None = None
    #: how far this purchase lifted the effective limit (0 without an override)
    override: int = 0


class LedgerView(BaseModel):
    ledger_id: str
    kind: LedgerKind
    month: str | None
    limit: Money
    effective_limit: Money
    committed: Money
    reserved: Money
    remaining: Money
    reservations: list[ReservationView] = Field(default_factory=list)
    alerts_sent: list[int] = Field(default_factory=list)
    purchases_committed: int = 0
    purchases_released: int = 0
    purchases_expired: int = 0
    limit_version: int = 0
    #: how many times this ledger continued as new so far
    generation: int = 0
    closed: bool = False
    #: velocity ledgers: when each committed purchase began to count (a reader applies the window to
    #: its own clock: a query sees the workflow's time of its last task)
    counted: list[datetime] = Field(default_factory=list)


class ReserveLayers(BaseModel):
    """Reserve one purchase on every layer, all or nothing."""

    model_config = ConfigDict(extra="forbid")

    purchase_id: PurchaseId
    amount: Money
    layers: list[LedgerLayer] = Field(min_length=1, max_length=MAX_LAYERS)
    principal_id: str | None = None
    hold_seconds: int = Field(default=3600, ge=1, le=MAX_HOLD_SECONDS)
    override_approval_id: str | None = Field(default=None, max_length=300)
    #: the layers the override applies to; None = every layer (the human approved this purchase)
    override_ledger_ids: list[str] | None = None
    #: where spend alerts go (the notifier routes by principal id; the email is the "to" line)
    principal_email: str | None = None


class LayeredReserveOutcome(BaseModel):
    ok: bool
    refused_by: LedgerLayer | None
    #: on a refusal for lack of room: the stable error code (REFUSAL_CODES, or TRANSACTION_LIMIT_EXCEEDED
    #: when the purchase is above the agent's per-purchase maximum and no layer was touched)
    code: str | None = None
    #: layers with no limit to enforce (e.g. a velocity layer of an agent without one): not reserved,
    #: so the caller commits and releases on the other layers only
    skipped: list[str] = Field(default_factory=list)
    #: the refusing layer's outcome, or on success the tightest layer's (least remaining)
    outcome: ReserveOutcome | None
    outcomes: list[ReserveOutcome] = Field(default_factory=list)
    #: the earliest expiry over the layers: the payment token's `expires_at` must not be later
    expires_at: datetime | None = None


class CommitLayers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purchase_id: PurchaseId
    amount: Money
    layers: list[LedgerLayer] = Field(min_length=1, max_length=MAX_LAYERS)


class ReleaseLayers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    purchase_id: PurchaseId
    layers: list[LedgerLayer] = Field(min_length=1, max_length=MAX_LAYERS)


class Reservation(BaseModel):
    """A held amount, as the ledger keeps it (minor units of the ledger's currency)."""

    amount: int
    reserved_at: datetime
    expires_at: datetime
    override_approval_id: str | None = None
    override: int = 0


class LedgerState(BaseModel):
    """Everything a ledger carries across continue-as-new. Settled purchase ids are kept so a
    purchase id is applied once for the ledger's whole life."""

    limit: Money
    limit_version: int = 0
    committed: int = 0
    #: the part of the committed spend a human approved above the base limit, purchase by purchase
    committed_overrides: int = 0
    reservations: dict[str, Reservation] = Field(default_factory=dict)
    committed_ids: list[str] = Field(default_factory=list)
    released_ids: list[str] = Field(default_factory=list)
    expired_count: int = 0
    alerts_sent: list[int] = Field(default_factory=list)
    pending_alerts: list[int] = Field(default_factory=list)
    last_activity: datetime | None = None
    generation: int = 0
    #: velocity ledgers: committed purchase id -> when it began to count (dropped after the window)
    counted: dict[str, datetime] = Field(default_factory=dict)


class LedgerStart(BaseModel):
    """Input of `SpendLedgerWorkflow`. Only the first run's `limit` matters; later runs carry `state`."""

    ledger_id: str
    kind: LedgerKind
    limit: Money
    limit_version: int = 0
    month: str | None = None
    principal_id: str | None = None
    principal_email: str | None = None
    provider: str | None = None
    #: continue as new once the history is this long (the server warns at 10,240 events)
    continue_as_new_after_events: int = Field(default=4000, ge=100, le=10_000)
    #: and after this many updates in one run (the server refuses more than 2,000 per run by default)
    continue_as_new_after_updates: int = Field(default=1000, ge=10, le=1900)
    idle_close_seconds: int = BUDGET_IDLE_CLOSE_SECONDS
    state: LedgerState | None = None
    #: the worker's authority proof over the first run's start (everything but `state`)
    proof: str | None = Field(default=None, max_length=200)


class SpendAlert(BaseModel):
    """Input of the `spend_alert` activity: committed spend crossed `threshold` % of the limit."""

    event_id: str
    ledger_id: str
    kind: LedgerKind
    threshold: int
    committed: Money
    limit: Money
    month: str | None = None
    provider: str | None = None
    principal_id: str | None = None
    principal_email: str | None = None
