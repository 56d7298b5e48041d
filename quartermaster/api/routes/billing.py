"""Spend and limits: the principal's month per provider, and limit changes (which need an approval)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Security

from models.api import ApprovalPending, LimitBody
from models.errors import ErrorCode, QuartermasterError
from models.forecast import FORECAST_MONTHS, Forecast
from models.limits import SpendSummary, SpendSummaryRequest
from quartermaster.api.deps import HumanCaller, Services, require_human
from quartermaster.api.errors import ERROR_RESPONSES
from quartermaster.orchestration.forecast import principal_forecast

router = APIRouter(
    prefix="/v1/billing",
    tags=["billing"],
    dependencies=[Security(require_human)],
    responses=ERROR_RESPONSES,
)
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@router.get("", response_model=SpendSummary)
async def show(
    caller: HumanCaller, svc: Services, month: Annotated[str | None, Query(max_length=7)] = None
) -> SpendSummary:
    """Limit, committed, reserved and remaining per provider for a month (default: this one, UTC)."""
    if month is not None and not MONTH.match(month):
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "month is YYYY-MM")
    return await svc.spend.spend_view(SpendSummaryRequest(principal_id=caller.principal_id, month=month))


@router.get("/forecast", response_model=Forecast)
async def forecast(
    caller: HumanCaller, svc: Services, months: Annotated[int, Query(ge=1, le=24)] = FORECAST_MONTHS
) -> Forecast:
    """Committed future charges (scheduled renewals) per month and provider, against each cap."""
    return await principal_forecast(
        svc.temporal, svc.spend, caller.principal_id, list(svc.settings.providers), months
    )


@router.post("/limits", response_model=ApprovalPending, status_code=202)
async def request_limit_change(body: LimitBody, caller: HumanCaller, svc: Services) -> ApprovalPending:
    """Ask for a new limit: the monthly cap (global, or one provider's), or an agent's monthly limit,
    per-purchase maximum or purchases per hour (one agent, or every agent). It applies once you
    approve it."""
    if body.provider is not None and body.provider not in svc.settings.providers:
        raise QuartermasterError(ErrorCode.UNKNOWN_PROVIDER, f"no provider named {body.provider!r}")
    # the orchestrator signs the start (an authority proof): the workflow refuses one without it
    _, approval_id = await svc.orchestrator.request_limit_change(
        email=caller.email,
        limit=body.limit,
        provider=body.provider,
        kind=body.kind,
        agent=body.agent,
        purchases_per_hour=body.purchases_per_hour,
    )
    return ApprovalPending(
        approval_id=approval_id,
        code=str(ErrorCode.LIMIT_CHANGE_APPROVAL_REQUIRED),
        message="a one-time code was sent to you; approve with qm approve APPROVAL_ID --code CODE",
    )
