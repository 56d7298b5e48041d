"""The API's OAuth protected-resource metadata (RFC 9728), which the `/mcp` endpoint's 401 points at.
Public by nature: it says how to authenticate, nothing about anyone."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from models.api import ProtectedResourceMetadata
from quartermaster.api.deps import Services, services

router = APIRouter(tags=["mcp"], dependencies=[Depends(services)])
WELL_KNOWN = "/.well-known/oauth-protected-resource"


@router.get(WELL_KNOWN, response_model=ProtectedResourceMetadata)
async def protected_resource_metadata(svc: Services) -> ProtectedResourceMetadata:
    """How to call the API and its MCP endpoint: a bearer in the Authorization header (an agent's
    session token, with its identity token in `X-QM-Identity`)."""
    base = svc.settings.public_url.rstrip("/")
    return ProtectedResourceMetadata(resource=base, mcp_endpoint=f"{base}/mcp")
