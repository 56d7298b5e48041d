"""Renewals: the inputs, state and view of `RenewalWorkflow`, one per paid recurring resource.

A resource bought at `anchor` with a `month` (or `year`) price is due again at `anchor + n intervals`
(n = 1, 2, ...), on the same day of the month, clamped to the month's last day. Each period is one
purchase id in that due date's monthly ledger, one Shared Payment Token and one charge key, all
derived from the workflow id and the period number, so every retry of a period acts once.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.ledger import MAX_HOLD_SECONDS, MAX_LAYERS, LedgerLayer
from models.money import Money
from models.secret import Secret

RenewalInterval = Literal["month", "year"]
RenewalStatus = Literal["scheduled", "awaiting_approval", "past_due", "suspended", "cancelled", "declined"]
#: periods kept in the view (older ones are in the ledgers, Stripe and the audit trail)
HISTORY_KEPT = 24


def renewal_workflow_id(provider: str, resource_id: str) -> str:
    """`renewal-<provider>-<resource id>`: one renewal schedule per resource."""
    return f"renewal-{provider}-{resource_id}"


def add_months(when: datetime, months: int) -> datetime:
    """`when` plus whole calendar months, the day clamped to the target month's length."""
    index = when.month - 1 + months
    year, month = when.year + index // 12, index % 12 + 1
    day = min(when.day, calendar.monthrange(year, month)[1])
    return when.replace(year=year, month=month, day=day)


def due_at(anchor: datetime, interval: RenewalInterval, period: int) -> datetime:
    """When period `period` (1 = the first renewal) is due."""
    return add_months(anchor, period * (12 if interval == "year" else 1))


class RenewalPolicy(BaseModel):
    """When the human hears of a renewal, how a declined card is retried, and when it stops.

    A period's reservation is held from the notice to the end of the grace period, so the two together
    stay under a ledger's longest hold."""

    model_config = ConfigDict(extra="forbid")

    #: the notice (and the cap check, and a `spend_limit` approval if needed) come this long before
    notice_seconds: int = Field(default=3 * 86_400, ge=60)
    #: after a declined charge, retry after each of these delays (from the due date)
    retry_after_seconds: list[int] = Field(default_factory=lambda: [86_400, 2 * 86_400], max_length=10)
    #: unpaid this long after the due date: the resource is suspended (docs/billing.md)
    grace_seconds: int = Field(default=3 * 86_400, ge=0)

    @model_validator(mode="after")
    def _fits_a_hold(self) -> RenewalPolicy:
        if self.notice_seconds + self.grace_seconds + 3600 > MAX_HOLD_SECONDS:
            raise ValueError("notice + grace must stay under the ledger's longest hold (7 days)")
        if any(d <= 0 or d > self.grace_seconds for d in self.retry_after_seconds):
            raise ValueError("every retry comes after the due date and within the grace period")
        return self

    @property
    def hold_seconds(self) -> int:
        return self.notice_seconds + self.grace_seconds + 3600


def renewal_retries(grace_seconds: int) -> list[int]:
    """The default retry schedule inside a grace period: after a third and two thirds of it."""
    if grace_seconds < 3:
        return []
    return [grace_seconds // 3, 2 * grace_seconds // 3]


class RenewalCharge(BaseModel):
    period: int
    due: datetime
    month: str
    amount: Money
    payment_reference: str


class RenewalState(BaseModel):
    """Carried across continue-as-new (one run per period)."""

    period: int = 1
    charges: list[RenewalCharge] = Field(default_factory=list)
    declines: int = 0
    #: taken off the next renewal (a downgrade's unused part, models.plan_change)
    credit: int = 0


class RenewalStart(BaseModel):
    """Input of `RenewalWorkflow`, started by the provisioning workflow when a paid recurring
    resource is complete."""

    model_config = ConfigDict(extra="forbid")

    principal_id: str
    principal_email: str
    provider: str
    service_id: str
    resource_id: str
    customer_id: str
    price: Money
    interval: RenewalInterval
    #: when the first charge was made: period n is due at anchor + n intervals
    anchor: datetime
    reversible: bool = True
    #: budget layers of the purchase (sessions); a renewal reserves in those still open
    budget_layers: list[LedgerLayer] = Field(default_factory=list, max_length=6)
    #: the agents of the chain that bought it (empty: a human's own purchase); each renewal counts in
    #: their months (models.ledger.agent_layers) and under their per-purchase maximum
    agent_chain: list[str] = Field(default_factory=list, max_length=MAX_LAYERS // 2)
    policy: RenewalPolicy = Field(default_factory=RenewalPolicy)
    approval_timeout_seconds: int = 86_400
    state: RenewalState = Field(default_factory=RenewalState)
    #: the worker's authority proof over the first run's start (everything but `state`)
    proof: str | None = Field(default=None, max_length=200)


def unsigned_fields(start: RenewalStart) -> frozenset[str]:
    """What a start's authority proof does not cover: the state (only the workflow's own continue-as-new
    carries it), and fields added after starts were recorded while at their defaults, so a start made
    before them (a running renewal, a recorded history) still verifies."""
    return frozenset({"state"} | ({"agent_chain"} if not start.agent_chain else set()))


class RenewalView(BaseModel):
    """What `qm billing show` and the forecast read from a renewal (a query; no secrets)."""

    resource_id: str
    provider: str
    service_id: str
    principal_id: str
    price: Money
    interval: RenewalInterval
    status: RenewalStatus
    period: int
    next_due: datetime | None
    charges: list[RenewalCharge] = Field(default_factory=list)
    declines: int = 0
    #: the first charge: period n is due at anchor + n intervals (the forecast projects from it)
    anchor: datetime | None = None
    #: the current period's price is already reserved in its ledger (the forecast does not count it twice)
    held: bool = False
    #: the principal's Stripe customer (an id, not a secret): a plan change pays through it
    customer_id: str | None = None
    #: taken off the next renewal (a downgrade's credit)
    credit: int = 0
    #: the stable code when an agent's limit refused the current period (AGENT_MONTHLY_LIMIT_EXCEEDED or
    #: TRANSACTION_LIMIT_EXCEEDED): it is not renewed and is suspended at its due date
    refused: str | None = None


class CancelRenewal(BaseModel):
    """Signal: stop renewing (the resource was removed). A held reservation is released."""

    reason: str = Field(default="removed", max_length=100)


class RenewInput(BaseModel):
    """Charge one period at the provider with a fresh payment token for exactly the price."""

    principal_id: str
    provider: str
    resource_id: str
    period: int
    due: datetime
    payment_token: Secret
    idempotency_key: str
    #: less than the price when a credit applies (None: the catalog price)
    amount: int | None = None


class RenewalTarget(BaseModel):
    """Which resource's renewal a start or cancel names."""

    provider: str
    resource_id: str
    reason: str = "removed"


class OpenLayers(BaseModel):
    layers: list[LedgerLayer] = Field(default_factory=list, max_length=8)


class RenewalNotice(BaseModel):
    """A message to the principal about one period (never to the agent)."""

    principal_id: str
    principal_email: str
    kind: Literal["renewal_upcoming", "renewal_charged", "renewal_declined", "renewal_suspended"]
    notice_id: str
    resource_id: str
    service_id: str
    amount: Money
    due: datetime
    next_attempt: datetime | None = None
    summary: str


def hold_for(policy: RenewalPolicy) -> timedelta:
    return timedelta(seconds=policy.hold_seconds)
