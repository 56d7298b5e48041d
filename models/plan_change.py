"""Plan changes (up- and downgrades within the catalog's `allowed_updates`) and their proration.

Proration is by time left in the current billing period: the old plan's unused part is credited,
the new plan's part is charged, and the difference is due now (an upgrade) or credited to the next
renewal (a downgrade, so no refund is needed and each month's ledger still equals Stripe).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.catalog import ServiceId
from models.money import Money
from models.provisioning import ProviderObjectId
from models.renewal import RenewalInterval, due_at
from models.request import Actor
from models.secret import Secret

Direction = Literal["upgrade", "downgrade"]


class PlanChangeQuote(BaseModel):
    """What a change costs, quoted before anything moves."""

    resource_id: str
    from_service_id: str
    to_service_id: str
    direction: Direction
    old_price: Money
    new_price: Money
    interval: RenewalInterval
    period_start: datetime
    period_end: datetime
    #: the old plan's unused part of the current period
    credit: Money
    #: the new plan's part of the current period
    charge: Money
    #: charge - credit when positive: charged now, through a payment token
    due_now: Money
    #: credit - charge when positive: taken off the next renewal
    next_renewal_credit: Money


def prorate(
    *,
    resource_id: str,
    from_service_id: str,
    to_service_id: str,
    old_price: Money,
    new_price: Money,
    interval: RenewalInterval,
    anchor: datetime,
    next_period: int,
    now: datetime,
) -> PlanChangeQuote:
    """The proration at `now` inside the period that ends at renewal `next_period`."""
    start = anchor if next_period <= 1 else due_at(anchor, interval, next_period - 1)
    end = due_at(anchor, interval, next_period)
    total = (end - start).total_seconds()
    left = min(max((end - now).total_seconds(), 0.0), total)
    credit = round(old_price.amount * left / total) if total else 0
    charge = round(new_price.amount * left / total) if total else 0
    cur = new_price.currency
    return PlanChangeQuote(
        resource_id=resource_id,
        from_service_id=from_service_id,
        to_service_id=to_service_id,
        direction="upgrade" if new_price.amount > old_price.amount else "downgrade",
        old_price=old_price,
        new_price=new_price,
        interval=interval,
        period_start=start,
        period_end=end,
        credit=Money(amount=credit, currency=cur),
        charge=Money(amount=charge, currency=cur),
        due_now=Money(amount=max(charge - credit, 0), currency=cur),
        next_renewal_credit=Money(amount=max(credit - charge, 0), currency=cur),
    )


class PlanChangeRequest(BaseModel):
    """Input of `PlanChangeWorkflow` (started by the API after its ownership check)."""

    model_config = ConfigDict(extra="forbid")

    resource_id: ProviderObjectId
    service_id: ServiceId
    to_service_id: ServiceId
    direction: Direction
    request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")]
    actor: Actor


class PlanChangeResult(BaseModel):
    resource_id: str
    outcome: Literal["completed", "rejected"]
    quote: PlanChangeQuote | None = None
    charged: Money | None = None
    payment_reference: str | None = None
    error_code: str | None = None
    error_message: str | None = None


class PlanChanged(BaseModel):
    """Signal to the renewal: renew as this service at this price, less `credit` next time."""

    service_id: str
    price: Money
    credit: Money
    #: the worker's authority proof: a signal without it changes nothing
    proof: str | None = Field(default=None, max_length=200)


class ChangePlanInput(BaseModel):
    principal_id: str
    provider: str
    resource_id: str
    to_service_id: str
    amount: Money | None = None
    payment_token: Secret | None = None
    idempotency_key: str


class PlanChangedInput(BaseModel):
    provider: str
    resource_id: str
    change: PlanChanged


class PlanChangeBody(BaseModel):
    """`POST /v1/resources/{id}/plan` and `.../plan/quote`."""

    model_config = ConfigDict(extra="forbid")

    to_service_id: ServiceId
    direction: Direction | None = None
    #: your idempotency key for the change: the same id finds the same change (default: random)
    request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")] | None = None
    #: seconds to wait for the result before answering with the change's state
    wait_seconds: float = Field(default=20, ge=0, le=60)


class PlanChangeView(BaseModel):
    """A plan change's state: done (`result`), or waiting for the human's approval."""

    request_id: str
    state: Literal["completed", "rejected", "awaiting_approval", "running"]
    quote: PlanChangeQuote | None = None
    approval_id: str | None = None
    result: PlanChangeResult | None = None
