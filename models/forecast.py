"""The forecast: what already-made commitments (scheduled renewals) will cost, month by month and
provider by provider, against each month's cap. Pure projection here; the API gathers the inputs.

A month's projected total is what its ledger already holds (committed + reserved) plus every renewal
due in it that is not reserved yet. A purchase being quoted or approved is projected the same way from
now, so a month it would push over its cap is flagged before anything moves.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from pydantic import BaseModel, Field

from models.ledger import month_end, month_of
from models.money import MAX_MINOR_UNITS, Money
from models.renewal import RenewalInterval, RenewalView, due_at

#: months a forecast covers by default (the current one included)
FORECAST_MONTHS = 12
#: renewal statuses that still commit future money
LIVE = ("scheduled", "awaiting_approval", "past_due")


class Commitment(BaseModel):
    """One recurring price to project: a running renewal, or the purchase being quoted."""

    provider: str
    resource_id: str | None = None
    service_id: str
    price: Money
    interval: RenewalInterval
    anchor: datetime
    #: the first period to count (1 = the first renewal after the anchor)
    first_period: int = 1


class ForecastMonth(BaseModel):
    """One month at one provider."""

    month: str
    provider: str
    limit: Money
    #: already in the month's ledger (committed + reserved)
    in_ledger: Money
    #: renewals due this month, not reserved yet
    renewals: Money
    #: in_ledger + renewals (+ the quoted purchase's charge, on a quote)
    total: Money
    over_limit: bool = False
    resources: list[str] = Field(default_factory=list)


class Forecast(BaseModel):
    """Committed future charges per month and per provider (`GET /v1/billing/forecast`)."""

    principal_id: str
    months: list[str]
    rows: list[ForecastMonth] = Field(default_factory=list)
    #: months (`provider:yyyy-mm`) whose total exceeds the cap
    over_limit: list[str] = Field(default_factory=list)


class QuoteForecast(BaseModel):
    """On a quote for a known caller: the months this purchase's charges would push over a cap."""

    months: list[ForecastMonth] = Field(default_factory=list)
    over_limit_months: list[str] = Field(default_factory=list)


def forecast_months(now: datetime, count: int) -> list[str]:
    """`count` calendar months (UTC) from the one containing `now`."""
    months, cursor = [], month_of(now)
    for _ in range(count):
        months.append(cursor)
        cursor = month_of(month_end(cursor))
    return months


def commitment_of(view: RenewalView) -> Commitment | None:
    """A live renewal's future periods (the current one skipped when it is already reserved)."""
    if view.status not in LIVE or view.anchor is None:
        return None
    return Commitment(
        provider=view.provider,
        resource_id=view.resource_id,
        service_id=view.service_id,
        price=view.price,
        interval=view.interval,
        anchor=view.anchor,
        first_period=view.period + (1 if view.held else 0),
    )


def due_by_month(c: Commitment, months: list[str]) -> dict[str, int]:
    """Minor units `c` comes due for, per month of `months`."""
    wanted, out = set(months), defaultdict[str, int](int)
    last = month_end(months[-1])
    period = c.first_period
    while (due := due_at(c.anchor, c.interval, period)) < last:
        if month_of(due) in wanted:
            out[month_of(due)] += c.price.amount
        period += 1
    return dict(out)


def project(
    principal_id: str,
    months: list[str],
    commitments: list[Commitment],
    limits: dict[str, Money],
    in_ledger: dict[tuple[str, str], Money],
) -> Forecast:
    """The forecast for `months` from the commitments, each provider's cap and what each month's
    ledger already holds (`in_ledger[(provider, month)]`)."""
    renewals: dict[tuple[str, str], int] = defaultdict(int)
    named: dict[tuple[str, str], list[str]] = defaultdict(list)
    for c in commitments:
        for month, amount in due_by_month(c, months).items():
            renewals[(c.provider, month)] += amount
            named[(c.provider, month)].append(c.resource_id or c.service_id)
    providers = sorted({p for p, _ in renewals} | {p for p, _ in in_ledger})
    rows = []
    for provider in providers:
        limit = limits.get(provider) or Money(amount=10_000)
        for month in months:
            held = in_ledger.get((provider, month), Money(amount=0, currency=limit.currency))
            due = renewals.get((provider, month), 0)
            if not due and not held.amount:
                continue
            total = held.amount + due
            rows.append(
                ForecastMonth(
                    month=month,
                    provider=provider,
                    limit=limit,
                    in_ledger=held,
                    renewals=Money(amount=min(due, MAX_MINOR_UNITS), currency=limit.currency),
                    total=Money(amount=min(total, MAX_MINOR_UNITS), currency=limit.currency),
                    over_limit=total > limit.amount,
                    resources=sorted(named.get((provider, month), [])),
                )
            )
    over = [f"{r.provider}:{r.month}" for r in rows if r.over_limit]
    return Forecast(principal_id=principal_id, months=months, rows=rows, over_limit=over)


def quote_effect(base: Forecast, purchase: Commitment, due_now: Money | None, limit: Money) -> QuoteForecast:
    """The months a purchase (charged now, renewing from now) would push over their cap."""
    adds = due_by_month(purchase, base.months)
    if due_now is not None and due_now.amount:
        first = month_of(purchase.anchor)
        adds[first] = adds.get(first, 0) + due_now.amount
    rows: list[ForecastMonth] = []
    by_key = {(r.provider, r.month): r for r in base.rows}
    for month in base.months:
        add = adds.get(month, 0)
        if not add:
            continue
        row = by_key.get((purchase.provider, month))
        lim = row.limit if row else limit
        held = row.total.amount if row else 0
        total = held + add
        rows.append(
            ForecastMonth(
                month=month,
                provider=purchase.provider,
                limit=lim,
                in_ledger=row.in_ledger if row else Money(amount=0, currency=lim.currency),
                renewals=row.renewals if row else Money(amount=0, currency=lim.currency),
                total=Money(amount=min(total, MAX_MINOR_UNITS), currency=lim.currency),
                over_limit=total > lim.amount,
                resources=[*(row.resources if row else []), purchase.service_id],
            )
        )
    return QuoteForecast(months=rows, over_limit_months=[r.month for r in rows if r.over_limit])
