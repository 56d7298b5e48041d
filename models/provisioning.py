"""Inputs and outputs of the provisioning, remove and rotate workflows and their activities."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.catalog import Interval, ServiceEntry, ServiceId
from models.forecast import QuoteForecast
from models.money import Money
from models.provider import Charge, LinkAction, ResourceStatus, TermsAcceptance
from models.request import Actor
from models.secret import Secret


class QuoteWarning(BaseModel):
    """A limit of the asking agent that this purchase would break: it would be refused with `code`."""

    code: str
    message: str


class Quote(BaseModel):
    """What a service costs now and per interval, and whether it can be undone."""

    service: ServiceEntry
    terms_version: str
    tos_url: str
    due_now: Money | None
    recurring: Money | None
    interval: Interval | None
    reversible: bool
    #: for a known caller and a recurring price: the months this purchase would push over a cap
    forecast: QuoteForecast | None = None
    #: for an agent that asks under its session: its limits this purchase would break
    warnings: list[QuoteWarning] = Field(default_factory=list)


class DiscoverInput(BaseModel):
    service_id: str
    configuration: dict[str, Any] = Field(default_factory=dict)
    max_price: Money | None = None


class Policy(BaseModel):
    """Worker-side settings the workflow needs (it cannot read the environment)."""

    approval_timeout_seconds: int = 86_400
    purchase_approval_above: int = 0
    public_url: str = ""
    payment_poll_seconds: int = 30
    #: renewals: notice before each due date, grace after a declined charge (models.renewal)
    renewal_notice_seconds: int = 3 * 86_400
    renewal_grace_seconds: int = 3 * 86_400


class ConnectionRef(BaseModel):
    """A linked account at a provider. The credential stays in the worker's encrypted store."""

    provider: str
    principal_id: str
    account_id: str
    link_action: LinkAction
    #: create_account found a saved connection: another request of the same principal made the account
    #: meanwhile (or this request's own attempt whose completion was lost)
    reused: bool = False


class AccountInput(BaseModel):
    provider: str
    principal_id: str
    principal_email: str
    customer_id: str
    idempotency_key: str
    terms: TermsAcceptance | None = None


class OAuthStart(BaseModel):
    authorization_url: str
    state: str


class OAuthCallback(BaseModel):
    """Sent by the gateway when the provider redirects the human back."""

    state: str
    code: Secret | None = None
    error: str | None = None


class CompleteOAuth(BaseModel):
    provider: str
    principal_id: str
    state: str
    code: Secret
    #: the identity assertion's email: the linked account must be this person's (None: refused)
    principal_email: str | None = None


class TermsRecord(BaseModel):
    principal_id: str
    provider: str
    terms_version: str


class PaymentTokenInput(BaseModel):
    customer_id: str
    payment_method_id: str
    provider: str
    amount: Money
    idempotency_key: str
    metadata: dict[str, str] = Field(default_factory=dict)
    #: from workflow time, so a retried attempt sends the same parameters under the same key
    expires_at: datetime | None = None


class RefundInput(BaseModel):
    """Give back what a provider charged for a request that is being undone."""

    payment_intent_id: str
    idempotency_key: str
    metadata: dict[str, str] = Field(default_factory=dict)


class IssuedToken(BaseModel):
    token_id: Secret
    expires_at: datetime


class CreateResourceInput(BaseModel):
    principal_id: str
    provider: str
    service_id: str
    name: str
    configuration: dict[str, Any]
    payment_token: Secret | None = None
    idempotency_key: str


class ResourceRef(BaseModel):
    principal_id: str
    provider: str
    resource_id: str


class SubmitInformationInput(BaseModel):
    ref: ResourceRef
    information: dict[str, Any]
    idempotency_key: str


class MintInput(BaseModel):
    ref: ResourceRef
    scopes: list[str]
    ttl_seconds: int
    idempotency_key: str


class RevokeCredentialInput(BaseModel):
    ref: ResourceRef
    credential_id: str


class IssuedCredential(BaseModel):
    """The agent's credential: env-style pairs (token values sealed in history) plus expiry."""

    credential_id: str
    env: dict[str, Secret]
    scopes: list[str]
    expires_at: datetime


Outcome = Literal["completed", "undone", "rejected"]


class ProvisionResult(BaseModel):
    """The end of a provisioning: fully done (`completed`) or fully undone (`undone`/`rejected`)."""

    request_id: str
    outcome: Outcome
    service_id: str
    resource_id: str | None = None
    resource_status: ResourceStatus | None = None
    link_action: LinkAction | None = None
    charge: Charge | None = None
    credential: IssuedCredential | None = None
    error_code: str | None = None
    error_message: str | None = None
    compensations: list[str] = Field(default_factory=list)
    #: what Stripe kept for an undone request: a charge the provider could not undo (else None)
    kept_charge: Charge | None = None
    principal_id: str | None = None
    agent_chain: list[str] = Field(default_factory=list)


#: provider-issued ids (resources, credentials): bounded and printable, they go into workflow IDs
ProviderObjectId = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
]
ScopeName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")]


class RemoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource_id: ProviderObjectId
    service_id: ServiceId
    actor: Actor
    #: credentials minted for the resource, revoked with it
    credential_ids: list[ProviderObjectId] = Field(default_factory=list, max_length=1000)


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource_id: ProviderObjectId
    service_id: ServiceId
    request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")]
    actor: Actor
    scopes: list[ScopeName] = Field(default_factory=list, max_length=100)
    ttl_seconds: Annotated[int, Field(ge=60, le=86_400, strict=True)] = 3600
    #: the credentials the new one replaces (revoked after the new one is minted)
    credential_ids: list[ProviderObjectId] = Field(default_factory=list, max_length=1000)


class ResourceActionResult(BaseModel):
    resource_id: str
    outcome: Literal["completed", "rejected"]
    credential: IssuedCredential | None = None
    error_code: str | None = None
    error_message: str | None = None


class ProvisionStatus(BaseModel):
    """What `qm status` shows for a running request (a query; no secrets)."""

    request_id: str
    step: str
    pending_approvals: list[dict[str, Any]] = Field(default_factory=list)
    resource_id: str | None = None
    link_action: LinkAction | None = None
