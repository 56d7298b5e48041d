"""Sessions: what a principal grants an agent for one task, and what an agent may delegate onward.

No secrets in `SessionState`: tokens travel only in `SignedSessionToken` / `DelegationResult` (sealed
by the codec). Session ids are opaque random hex; they appear in workflow IDs (`session-<id>`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from models.money import Money
from models.request import Actor, AgentName
from models.secret import Secret

#: `<provider>/<service>`, `<provider>/*`, `<provider>/<prefix>*` or `*` (everything; roots only)
ServicePattern = Annotated[
    str, Field(pattern=r"^(\*|[a-z][a-z0-9-]{1,30}/(\*|[a-z][a-z0-9:._-]{0,62}\*?))$", max_length=100)
]
SessionId = Annotated[str, Field(pattern=r"^[a-f0-9]{16,64}$")]
SessionStatus = Literal["pending_approval", "active", "expired", "revoked", "denied"]
#: the deepest delegation any session may allow (root is depth 0)
MAX_DELEGATION_DEPTH = 8
MAX_SESSION_TTL_SECONDS = 7 * 86_400
#: live (unexpired, unrevoked) provider credentials one session may hold: its state travels in every
#: authorization's query and in each continue-as-new, so it is bounded (docs/decisions.md)
MAX_LIVE_CREDENTIALS = 1_000
#: the memo key where a session publishes its live facts, in the same workflow task as each change:
#: `{"status": ..., "near_credential_limit": bool}`. Verifiers read it with a describe (no workflow
#: task, no query) and keep the rest of the state, fixed once the session is active (docs/decisions.md)
LIVE_MEMO = "live"
#: from this many live credentials on, the memo says so and verifiers count them exactly (a query)
NEAR_CREDENTIAL_LIMIT = MAX_LIVE_CREDENTIALS // 2
#: a session continues as new once its run's history reaches this many events (Temporal stops a run at
#: 51,200; each recorded credential adds 5)
SESSION_CONTINUE_AS_NEW_EVENTS = 10_000


def session_workflow_id(session_id: str) -> str:
    return f"session-{session_id}"


def agent_workflow_id(principal_id: str, agent: str) -> str:
    """One kill-switch entity per (principal, agent name): agent names are the principal's own."""
    return f"agent-{principal_id}-{agent}"


def budget_ledger_id(session_id: str) -> str:
    """The spend ledger layer that holds one session's budget."""
    return f"budget-session-{session_id}"


class SessionGrant(BaseModel):
    """What a session allows. A child's grant is always contained in its parent's (see attenuation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_services: list[ServicePattern] = Field(min_length=1, max_length=50)
    budget: Money
    expires_at: datetime
    #: the deepest session depth allowed below the root of this tree (root = 0)
    max_depth: Annotated[int, Field(ge=0, le=MAX_DELEGATION_DEPTH)] = 0
    #: credential scopes the session may hold; None = whatever each allowed service offers
    allowed_scopes: list[str] | None = None


class CredentialRecord(BaseModel):
    """A provider credential minted under a session: how to revoke it, never its value."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    credential_id: str
    #: the lead's reference to the account credential (e.g. a connection id), never the secret
    account_ref: str
    expires_at: datetime | None = None
    recorded_at: datetime | None = None
    revoked: bool = False
    revoke_error: str | None = None


class SessionState(BaseModel):
    """One session entity (workflow `session-<session_id>`), as `qm session show` prints it."""

    model_config = ConfigDict(extra="forbid")

    session_id: str
    principal_id: str
    agent: str
    #: the SPIFFE id of the agent identity the session token is bound to
    agent_identity: str
    parent_id: str | None = None
    depth: int = 0
    #: agent names, root (the human's first agent) first, ending with `agent`
    chain: list[str] = Field(default_factory=list)
    #: the agents' SPIFFE ids in the same order
    chain_identities: list[str] = Field(default_factory=list)
    #: the ids of the sessions above this one, root first (excluding this one)
    ancestors: list[str] = Field(default_factory=list)
    grant: SessionGrant
    budget_ledger_id: str = ""
    children: list[str] = Field(default_factory=list)
    credentials: list[CredentialRecord] = Field(default_factory=list)
    status: SessionStatus = "pending_approval"
    approval_id: str | None = None
    created_at: datetime | None = None
    activated_at: datetime | None = None
    closed_at: datetime | None = None
    closed_reason: str | None = None

    @property
    def session_ids(self) -> list[str]:
        """Root first, this session last."""
        return [*self.ancestors, self.session_id]

    def live_credentials(self, now: datetime) -> list[CredentialRecord]:
        """The credentials a close must still revoke: not revoked, not expired at `now`."""
        return [c for c in self.credentials if not c.revoked and (c.expires_at is None or c.expires_at > now)]


class SessionOpenRequest(BaseModel):
    """A principal asks to open a root session for an agent (a human action: approval `session_open`)."""

    model_config = ConfigDict(extra="forbid")

    session_id: SessionId
    #: opaque id of the principal (`Keyring.principal_id(email)`, computed by the client)
    principal_id: str = Field(pattern=r"^p[a-f0-9]{20}$")
    principal_email: EmailStr
    agent: AgentName
    allowed_services: list[ServicePattern] = Field(min_length=1, max_length=50)
    budget: Money
    ttl_seconds: Annotated[int, Field(ge=60, le=MAX_SESSION_TTL_SECONDS)] = 3600
    max_depth: Annotated[int, Field(ge=0, le=MAX_DELEGATION_DEPTH)] = 0
    allowed_scopes: list[str] | None = None
    approval_timeout_seconds: Annotated[int, Field(ge=10, le=7 * 86_400)] = 86_400
    trust_domain: str = "quartermaster.local"


class SessionContinuation(BaseModel):
    """What an active session carries into its next run (its own continue-as-new, never a client's)."""

    model_config = ConfigDict(extra="forbid")

    state: SessionState
    #: the bound session token (sealed by the codec, as in the activity result it came from)
    token: Secret | None = None


class SessionStart(BaseModel):
    """Input of `SessionWorkflow`: a root open request, the ready state of a delegated child, or (only
    from the session's own continue-as-new) the state of its previous run."""

    model_config = ConfigDict(extra="forbid")

    open: SessionOpenRequest | None = None
    delegated: SessionState | None = None
    continued: SessionContinuation | None = None
    #: the API's proof over `open`, or the worker's over `delegated` (models.authority)
    proof: str | None = Field(default=None, max_length=200)
    #: when to continue as new (tests lower it); a child inherits its parent's
    continue_as_new_after_events: Annotated[int, Field(ge=50, le=40_000)] = SESSION_CONTINUE_AS_NEW_EVENTS


class DelegationRequest(BaseModel):
    """An agent holding a session asks for a narrower child session for another attested agent.

    Every grant field is optional: a missing one inherits the parent's value, never "unlimited".
    """

    model_config = ConfigDict(extra="forbid")

    session_token: Secret
    identity_token: Secret
    to_agent: AgentName
    allowed_services: list[ServicePattern] | None = None
    budget: Money | None = None
    ttl_seconds: Annotated[int, Field(ge=60, le=MAX_SESSION_TTL_SECONDS)] | None = None
    max_depth: Annotated[int, Field(ge=0, le=MAX_DELEGATION_DEPTH)] | None = None
    allowed_scopes: list[str] | None = None


class DelegationAsk(BaseModel):
    """The grant fields of a delegation request (no tokens): input of the pure attenuation function."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_services: list[str] | None = None
    budget: Money | None = None
    ttl_seconds: int | None = None
    max_depth: int | None = None
    allowed_scopes: list[str] | None = None


class DelegationResult(BaseModel):
    session_id: str
    session_token: Secret
    grant: SessionGrant
    chain: list[str]
    depth: int


class SignedSessionToken(BaseModel):
    token: Secret
    #: for a delegation: the worker's authority proof over the child's start (SessionStart.proof)
    start_proof: str | None = None


class SessionTokenRequest(BaseModel):
    """What the session token states (signed by Quartermaster in the worker)."""

    model_config = ConfigDict(extra="forbid")

    session_id: str
    principal_id: str
    agent_identity: str
    allowed_services: list[str]
    expires_at: datetime
    issued_at: datetime
    #: agent identities root first, ending with the holder (nested into RFC 8693 `act` claims)
    chain_identities: list[str]
    ancestors: list[str] = Field(default_factory=list)
    depth: int = 0
    #: a delegated child's whole state: the activity also signs the child's start with it
    state: SessionState | None = None


class RevokeRequest(BaseModel):
    """Revoke a session (and so its descendants). `by` is an opaque principal id or `agent-freeze`."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="revoked", max_length=200)
    by: str | None = None


class CloseSummary(BaseModel):
    session_id: str
    status: SessionStatus
    credentials_revoked: int = 0
    credential_failures: int = 0
    descendants_closed: int = 0


class AuthorizationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: Actor
    service_id: str
    amount: Money | None = None
    action: Literal["provision", "remove", "rotate", "link"] = "provision"
    #: the request the actor asked for (a human actor's proof names it)
    request_id: str | None = None


class Authorization(BaseModel):
    allowed: bool
    #: an ErrorCode value when refused
    code: str | None = None
    reason: str | None = None
    principal_id: str
    agent_chain: list[str] = Field(default_factory=list)
    #: root first
    session_ids: list[str] = Field(default_factory=list)
    #: `models.ledger.LedgerLayer`-shaped dicts, root first: {"ledger_id", "limit", "kind": "budget"}
    budget_layers: list[dict[str, Any]] = Field(default_factory=list)
    max_credential_ttl_seconds: int | None = None
    allowed_scopes: list[str] | None = None
    #: the verified SPIFFE id of the acting agent, when an identity token was presented
    agent_identity: str | None = None


class RecordCredential(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str
    provider: str
    credential_id: str
    account_ref: str
    expires_at: datetime | None = None


class RecordOutcome(BaseModel):
    accepted: bool
    status: SessionStatus


class AgentFreezeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    principal_id: str
    reason: str = Field(default="kill switch", max_length=200)


class AgentUnfreezeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    principal_id: str
    principal_email: EmailStr
    reason: str = Field(default="unfreeze", max_length=200)
    #: the API's authority proof: the principal id and the email the code goes to belong together
    proof: str | None = Field(default=None, max_length=200)


class AgentSessionRef(BaseModel):
    agent: AgentName
    session_id: str
    principal_id: str = ""


class AgentStatus(BaseModel):
    agent: AgentName
    frozen: bool = False
    frozen_by: str | None = None
    frozen_at: datetime | None = None
    reason: str | None = None
    sessions: list[str] = Field(default_factory=list)
    unfreeze_approval_id: str | None = None


class FreezeResult(BaseModel):
    agent: str
    frozen: bool
    sessions_revoked: list[str] = Field(default_factory=list)


class RevokeSessions(BaseModel):
    session_ids: list[str]
    request: RevokeRequest
    #: also revoke every running session of this agent that a visibility search finds
    agent: AgentName | None = None
    #: ... of this principal only: an agent name is unique within one principal, not across them
    principal_id: str | None = None


class RevokeSessionsResult(BaseModel):
    closed: list[CloseSummary] = Field(default_factory=list)


class RevokeCredentials(BaseModel):
    session_id: str
    credentials: list[CredentialRecord]


class RevokeCredentialsResult(BaseModel):
    #: credential ids revoked at the provider (or already inactive there)
    revoked: list[str] = Field(default_factory=list)
    #: credential id -> stable error code, for those that could not be revoked
    failed: dict[str, str] = Field(default_factory=dict)


class DelegationCheck(BaseModel):
    """Input of `check_delegation`: the presenter's tokens, checked against the parent session."""

    session_id: str
    session_token: Secret
    identity_token: Secret
    to_agent: str
    budget_ledger_id: str
    budget: Money


class DelegationCheckResult(BaseModel):
    ok: bool
    code: str | None = None
    reason: str | None = None
    #: what is left of the parent's budget (budget minus what its ledger has reserved or committed)
    parent_remaining: Money | None = None
    to_agent_identity: str | None = None
