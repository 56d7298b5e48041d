"""Linking an existing provider account without buying (`qm link PROVIDER`). Human only: a link is
the principal's own account at the provider; another principal's link does not exist (NOT_FOUND)."""

from __future__ import annotations

from fastapi import APIRouter, Security

from models.link import LinkBody, LinkView
from quartermaster.api.deps import HumanCaller, Services, require_human
from quartermaster.api.errors import ERROR_RESPONSES

router = APIRouter(
    prefix="/v1/links",
    tags=["links"],
    dependencies=[Security(require_human)],
    responses=ERROR_RESPONSES,
)


@router.post("", response_model=LinkView, status_code=202)
async def start_link(body: LinkBody, caller: HumanCaller, svc: Services) -> LinkView:
    """Link your existing account at `provider` (OAuth consent at the provider; nothing is bought).
    A second call while one waits joins it; once linked, the answer says so at once."""
    await svc.orchestrator.link(email=caller.email, provider=body.provider)
    return await svc.orchestrator.link_view(principal_id=caller.principal_id, provider=body.provider)


@router.get("/{provider}", response_model=LinkView)
async def get_link(provider: str, caller: HumanCaller, svc: Services) -> LinkView:
    """Your latest link at `provider`: running, waiting for your consent, completed or rejected."""
    return await svc.orchestrator.link_view(principal_id=caller.principal_id, provider=provider[:40])
