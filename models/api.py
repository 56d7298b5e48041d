"""Request and response bodies of the Quartermaster API (shared by the API, the Python client and the
CLI; the TypeScript client generates its types from the OpenAPI document built from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from models.approval import ApprovalRequest
from models.catalog import ServiceId
from models.limits import MAX_PURCHASES_PER_HOUR, LimitKind, check_limit_target
from models.money import Money
from models.request import AgentName, RequestId, ResourceName
from models.session import MAX_DELEGATION_DEPTH, MAX_SESSION_TTL_SECONDS, ServicePattern, SessionId

Strict = ConfigDict(extra="forbid")


class QuoteBody(BaseModel):
    model_config = Strict
    service_id: ServiceId
    configuration: dict[str, Any] = Field(default_factory=dict)
    max_price: Money | None = None


class ProvisionBody(BaseModel):
    """What a caller asks for. Who asks comes from the verified credentials, never from here."""

    model_config = Strict
    #: the caller's idempotency key, scoped to the principal (default: a random one)
    request_id: RequestId | None = None
    service_id: ServiceId
    name: ResourceName
    configuration: dict[str, Any] = Field(default_factory=dict)
    max_price: Money | None = None
    budget: Money | None = None
    scopes: list[Annotated[str, Field(max_length=100)]] = Field(default_factory=list, max_length=50)
    credential_ttl_seconds: Annotated[int, Field(ge=60, le=86_400)] = 3600


class CredentialRef(BaseModel):
    """A credential by reference: its id and the names of the variables it fills, never a value."""

    credential_id: str
    names: list[str]
    expires_at: datetime | None = None
    scopes: list[str] = Field(default_factory=list)


class WaitingFor(BaseModel):
    """What the human must do; URLs and codes go only to the human's channel and their login."""

    approval_id: str
    kind: str
    summary: str
    expires_at: datetime
    asked_via: str = "the principal's notification channel"


class ProvisionView(BaseModel):
    """A request as its caller sees it."""

    request_id: str
    state: Literal["running", "waiting_for_human", "completed", "undone", "rejected"]
    step: str | None = None
    service_id: str | None = None
    resource_id: str | None = None
    resource_status: str | None = None
    link_action: str | None = None
    charge: Money | None = None
    credential: CredentialRef | None = None
    error: dict[str, str] | None = None
    waiting_for: list[WaitingFor] = Field(default_factory=list)
    compensations: list[str] = Field(default_factory=list)


class DecisionBody(BaseModel):
    model_config = Strict
    decision: Literal["approve", "deny"]
    #: the one-time code the human received on their channel: binds the decision to that approval
    code: Annotated[str, Field(max_length=64)]
    reason: Annotated[str, Field(max_length=500)] | None = None
    information: dict[str, Any] | None = None
    raise_limit_to: Money | None = None
    #: the `view_hash` of `GET /v1/approvals/{id}` the human saw: refused (APPROVAL_CHANGED) when what
    #: the approval is about (price, configuration, cap, budget) changed since. Optional for old clients.
    view_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None


class ApprovalView(ApprovalRequest):
    """A pending approval, with every detail (only a human's login sees these)."""

    #: sha256 over the canonical JSON of every fact the approval page shows (docs/approvals.md)
    view_hash: str | None = None


class LoginStart(BaseModel):
    model_config = Strict
    email: EmailStr


class LoginStarted(BaseModel):
    login_id: str
    expires_at: datetime
    sent_to: str = "your notification channel"


class LoginVerify(BaseModel):
    model_config = Strict
    login_id: Annotated[str, Field(max_length=64)]
    code: Annotated[str, Field(max_length=64)]


class LoginToken(BaseModel):
    token: str
    principal_id: str
    email: str
    expires_at: datetime


class WhoAmI(BaseModel):
    kind: Literal["human", "agent", "anonymous"]
    principal_id: str | None = None
    email: str | None = None
    agent: str | None = None
    agent_identity: str | None = None
    session_id: str | None = None
    agent_chain: list[str] = Field(default_factory=list)


class SessionOpenBody(BaseModel):
    model_config = Strict
    agent: AgentName
    allowed_services: list[ServicePattern] = Field(min_length=1, max_length=50)
    budget: Money
    ttl_seconds: Annotated[int, Field(ge=60, le=MAX_SESSION_TTL_SECONDS)] = 3600
    max_depth: Annotated[int, Field(ge=0, le=MAX_DELEGATION_DEPTH)] = 0
    allowed_scopes: list[str] | None = None


class DelegateBody(BaseModel):
    model_config = Strict
    to_agent: AgentName
    allowed_services: list[ServicePattern] | None = None
    budget: Money | None = None
    ttl_seconds: Annotated[int, Field(ge=60, le=MAX_SESSION_TTL_SECONDS)] | None = None
    max_depth: Annotated[int, Field(ge=0, le=MAX_DELEGATION_DEPTH)] | None = None
    allowed_scopes: list[str] | None = None


class RevokeBody(BaseModel):
    model_config = Strict
    reason: Annotated[str, Field(max_length=200)] = "revoked by the principal"


class FreezeBody(BaseModel):
    model_config = Strict
    reason: Annotated[str, Field(max_length=200)] = "kill switch"


class MeasurementBody(BaseModel):
    """What `qm run` measured about the process it is about to start."""

    model_config = Strict
    executable: Annotated[str, Field(max_length=4096)]
    script: Annotated[str, Field(max_length=4096)] | None = None
    sha256: Annotated[str, Field(pattern=r"^[a-f0-9]{64}$")]
    sha256_of: Literal["script", "binary", "inline"]
    argv: list[Annotated[str, Field(max_length=4096)]] = Field(max_length=256)
    uid: int
    host: Annotated[str, Field(max_length=255)]
    cwd: Annotated[str, Field(max_length=4096)]
    measured_at: datetime


class AttestBody(BaseModel):
    model_config = Strict
    agent: AgentName
    measurement: MeasurementBody
    #: bind the process to this session (the human's own, or one delegated from the calling agent's)
    session_id: SessionId | None = None


class AttestResult(BaseModel):
    """The tokens `qm run` injects into the child's environment, and nothing else."""

    agent: str
    identity_token: str
    identity_jti: str
    identity_expires_at: datetime
    session_id: str | None = None
    session_token: str | None = None


class RetireBody(BaseModel):
    model_config = Strict
    jtis: list[Annotated[str, Field(max_length=64)]] = Field(max_length=1000)


class LimitBody(BaseModel):
    """One limit to set: the monthly cap (global or one `provider`'s), or an agent layer (`agent`, or
    every agent): `agent_monthly` and `per_transaction` take a `limit`, `velocity` purchases per hour."""

    model_config = Strict
    limit: Money | None = None
    provider: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")] | None = None
    kind: LimitKind = "monthly"
    agent: AgentName | None = None
    purchases_per_hour: int | None = Field(default=None, ge=1, le=MAX_PURCHASES_PER_HOUR)

    @model_validator(mode="after")
    def _fits_the_kind(self) -> LimitBody:
        check_limit_target(
            self.kind,
            provider=self.provider,
            agent=self.agent,
            limit=self.limit,
            per_hour=self.purchases_per_hour,
        )
        if self.limit is not None and self.limit.amount <= 0:
            raise ValueError("a limit above 0")
        return self


class ApprovalPending(BaseModel):
    """A change that waits for the principal's approval (its code went to their channel)."""

    approval_id: str
    status: Literal["approval_required"] = "approval_required"
    code: str
    message: str


class ResourceInfo(BaseModel):
    """A live resource and its current credential by reference (names, never values)."""

    resource_id: str
    service_id: str
    request_id: str
    workflow_id: str
    credential_id: str | None
    credential_names: list[str]
    expires_at: str | None


class ResourceAction(BaseModel):
    """The result of a rotate or remove, with the new credential by reference only."""

    resource_id: str
    outcome: Literal["completed", "rejected"]
    credential: CredentialRef | None = None
    error: dict[str, str] | None = None


class ProtectedResourceMetadata(BaseModel):
    """OAuth 2.0 Protected Resource Metadata (RFC 9728) of the API, which includes the MCP endpoint.
    Agents do not run an OAuth flow: their bearer is the session token `qm run` injected, presented
    with the identity token in `X-QM-Identity`."""

    resource: str
    resource_name: str = "Quartermaster API"
    bearer_methods_supported: list[str] = Field(default_factory=lambda: ["header"])
    resource_documentation: str | None = None
    #: where the MCP streamable HTTP transport is served
    mcp_endpoint: str
