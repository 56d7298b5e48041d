"""What providers answer, as the orchestrator sees it (the provider contract's response bodies)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.money import Money
from models.secret import Secret

LinkAction = Literal["created", "linked_existing"]
ResourceStatus = Literal["pending", "complete", "needs_information", "errored", "removed"]


class TermsAcceptance(BaseModel):
    """Evidence that the human accepted a provider's terms version."""

    model_config = ConfigDict(extra="forbid")

    terms_version: str
    accepted_at: datetime
    accepted_by: str  # opaque principal id
    approval_id: str


class AccountLookup(BaseModel):
    exists: bool


class ProviderAccount(BaseModel):
    """An account at a provider plus the orchestrator's credential for acting on it."""

    model_config = ConfigDict(extra="ignore")

    account_id: str
    link_action: LinkAction
    credential: Secret
    scopes: list[str] = Field(default_factory=list)
    expires_at: datetime | None = None
    refresh_token: Secret | None = None
    #: the account holder's email as the provider verified it (OAuth linking checks it)
    primary_email: str | None = None
    email_verified: bool = False


class Charge(BaseModel):
    amount: Money
    payment_reference: str


class Resource(BaseModel):
    model_config = ConfigDict(extra="ignore")

    resource_id: str
    service_id: str
    name: str
    status: ResourceStatus
    configuration: dict[str, Any] = Field(default_factory=dict)
    charge: Charge | None = None
    error_message: str | None = None
    needs_information_schema: dict[str, Any] | None = None


class Credential(BaseModel):
    """An API token minted at the provider for the agent."""

    model_config = ConfigDict(extra="ignore")

    credential_id: str
    token: Secret
    scopes: list[str]
    expires_at: datetime
    account_id: str


class Introspection(BaseModel):
    """RFC 7662. An inactive or unknown token is exactly `{"active": false}`."""

    model_config = ConfigDict(extra="ignore")

    active: bool
    scope: str | None = None
    exp: int | None = None
    sub: str | None = None
    aud: str | None = None
    client_id: str | None = None
