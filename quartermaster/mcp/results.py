"""What the tools return: the API's own models by reference, plus a `next_step` the model can act on.
Nothing here can hold a credential value, an approval code or a human's URL: the API's views already
leave them out (`ProvisionView`, `ResourceInfo`, `ResourceAction`) and these only add text."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from models.api import ProvisionView, ResourceAction, ResourceInfo
from models.catalog import Catalog
from models.session import SessionGrant, SessionStatus

#: how a credential reaches a process; said in every result that names one
USE_CREDENTIAL = (
    "Its values are never shown to you: run the program that needs them with "
    "`qm exec {resource_id} -- COMMAND` (they arrive in that process's environment only)."
)


class CatalogResult(BaseModel):
    """Every provider's services: prices, terms, configuration schemas and `llm_context` guidance."""

    providers: list[Catalog]


class ProvisionOutcome(ProvisionView):
    """A provisioning request as its caller sees it, and what to do next."""

    next_step: str = ""


class ResourceList(BaseModel):
    """Live resources visible to this agent, with the names (never values) of their credentials."""

    resources: list[ResourceInfo] = Field(default_factory=list)
    how_to_use: str = "`qm exec RESOURCE_ID -- COMMAND` runs COMMAND with the credential in its environment."


class ResourceOutcome(ResourceAction):
    """A rotate or remove, with the new credential by reference only."""

    next_step: str = ""


class DelegatedSession(BaseModel):
    """A narrower session for a sub-agent. Its token is not shown: the sub-agent gets it at launch."""

    session_id: str
    agent: str
    parent_id: str | None = None
    depth: int = 0
    chain: list[str] = Field(default_factory=list)
    grant: SessionGrant
    status: SessionStatus
    created_at: datetime | None = None
    next_step: str = ""
