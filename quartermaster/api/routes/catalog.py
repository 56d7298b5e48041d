"""Discovery: the providers' catalogs and quotes. Open to anyone, logged in or not."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from models.api import QuoteBody
from models.catalog import Catalog
from models.errors import ErrorCode
from models.provisioning import Quote, QuoteWarning
from quartermaster.api.deps import Agent, MaybeCaller, Services, optional_caller
from quartermaster.api.errors import ERROR_RESPONSES
from quartermaster.orchestration.forecast import quote_forecast

router = APIRouter(
    prefix="/v1", tags=["catalog"], dependencies=[Depends(optional_caller)], responses=ERROR_RESPONSES
)


@router.get("/catalog", response_model=list[Catalog])
async def list_catalog(svc: Services, provider: str | None = None) -> list[Catalog]:
    """Every provider's services, prices, terms versions and `llm_context` links (or one provider's)."""
    return await svc.orchestrator.catalog(provider)


@router.post("/quotes", response_model=Quote)
async def quote(body: QuoteBody, svc: Services, caller: MaybeCaller) -> Quote:
    """Price a service without starting anything. For a logged-in human or an agent's session, a
    recurring price also says which future months its renewals would push over the cap; an agent asking
    under its session also learns whether the price is above its per-purchase maximum (`warnings`)."""
    q = await svc.orchestrator.quote(body.service_id, body.configuration, body.max_price)
    if caller is not None:
        q.forecast = await quote_forecast(
            svc.temporal, svc.spend, caller.principal_id, q, list(svc.settings.providers)
        )
    if isinstance(caller, Agent) and q.due_now is not None:
        limits = await svc.spend.principal_limits(caller.principal_id)
        for agent in dict.fromkeys([*caller.chain, caller.agent]):  # its delegators' maxima bind it too
            cap = limits.for_agent(agent).per_transaction
            if cap is not None and cap.currency == q.due_now.currency and q.due_now.amount > cap.amount:
                message = f"{q.due_now} is above the per-purchase maximum of {agent} ({cap})"
                q.warnings.append(QuoteWarning(code=ErrorCode.TRANSACTION_LIMIT_EXCEEDED, message=message))
                break
    return q
