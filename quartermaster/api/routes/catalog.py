"""Discovery: the providers' catalogs and quotes. Open to anyone, logged in or not."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from models.api import QuoteBody
from models.catalog import Catalog
from models.provisioning import Quote
from quartermaster.api.deps import MaybeCaller, Services, optional_caller
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
    recurring price also says which future months its renewals would push over the cap."""
    quote = await svc.orchestrator.quote(body.service_id, body.configuration, body.max_price)
    if caller is not None:
        quote.forecast = await quote_forecast(
            svc.temporal, svc.spend, caller.principal_id, quote, list(svc.settings.providers)
        )
    return quote
