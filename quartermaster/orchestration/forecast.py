"""The forecast's inputs, read server-side: a principal's running renewals (by search attribute, then
each one's `view`), their limits, and what each month's ledger already holds. models.forecast projects."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from activities.spend import SpendActivities
from models.forecast import (
    FORECAST_MONTHS,
    Commitment,
    Forecast,
    QuoteForecast,
    commitment_of,
    forecast_months,
    project,
    quote_effect,
)
from models.money import Money
from models.provisioning import Quote
from models.renewal import RenewalView
from workflows.search_attributes import QM_PRINCIPAL


async def renewals_of(temporal: Client, principal_id: str) -> list[RenewalView]:
    """The principal's running renewal workflows' views (visibility is best effort)."""
    query = (
        f"WorkflowType = 'RenewalWorkflow' AND ExecutionStatus = 'Running' "
        f"AND {QM_PRINCIPAL.name} = '{principal_id}'"
    )
    views: list[RenewalView] = []
    try:
        async for wf in temporal.list_workflows(query):
            try:
                view: RenewalView = await temporal.get_workflow_handle(wf.id).query(
                    "view", result_type=RenewalView
                )
            except (RPCError, WorkflowQueryFailedError):
                continue  # it just ended
            if view.principal_id == principal_id:  # the view, not only the search attribute, says so
                views.append(view)
    except RPCError:
        return views
    return views


async def principal_forecast(
    temporal: Client,
    spend: SpendActivities,
    principal_id: str,
    providers: list[str],
    months: int = FORECAST_MONTHS,
    now: datetime | None = None,
) -> Forecast:
    """Committed future charges per month and provider, against each month's cap."""
    window = forecast_months(now or datetime.now(UTC), months)
    renewals = await renewals_of(temporal, principal_id)
    commitments = [c for v in renewals if (c := commitment_of(v)) is not None]
    limits_doc = await spend.principal_limits(principal_id)
    names = sorted({*providers, *(c.provider for c in commitments)})
    limits = {p: limits_doc.for_provider(p) for p in names}
    in_ledger: dict[tuple[str, str], Money] = {}
    keys = [(p, m) for p in names for m in window]
    # read every month's ledger directly, not through visibility (which may lag a new ledger), at once
    views = await asyncio.gather(*(spend.ledger_view(f"ledger-{principal_id}-{p}-{m}") for p, m in keys))
    for (provider, month), view in zip(keys, views, strict=True):
        if view is not None and (view.committed.amount or view.reserved.amount):
            in_ledger[(provider, month)] = Money(
                amount=view.committed.amount + view.reserved.amount, currency=view.committed.currency
            )
    return project(principal_id, window, commitments, limits, in_ledger)


async def quote_forecast(
    temporal: Client, spend: SpendActivities, principal_id: str, quote: Quote, providers: list[str]
) -> QuoteForecast | None:
    """For a recurring price: the months this purchase would push over a cap (None otherwise)."""
    if quote.recurring is None or quote.interval not in ("month", "year"):
        return None
    now = datetime.now(UTC)
    base = await principal_forecast(temporal, spend, principal_id, providers, now=now)
    provider = quote.service.provider
    limit = (await spend.principal_limits(principal_id)).for_provider(provider)
    purchase = Commitment(
        provider=provider,
        service_id=quote.service.service_id,
        price=quote.recurring,
        interval=quote.interval,
        anchor=now,
    )
    return quote_effect(base, purchase, quote.due_now, limit)
