"""One small interface per concern of the store. Every method is async (the activities and the API
are); the backends run the blocking driver in a thread. Times are timezone-aware UTC `datetime`s at
the interface and epoch seconds in the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from models.secret import Secret

if TYPE_CHECKING:
    from models.approval import ApprovalRequest
    from providers.store.approvals import ApprovalPage


class Sealer(Protocol):
    """What seals credentials before they are written (`quartermaster.codec.SecretBox`)."""

    def seal(self, plaintext: str) -> str: ...

    def unseal(self, sealed: str) -> str: ...


# -- linked accounts, OAuth state, terms -----------------------------------------------------------
@dataclass(frozen=True)
class StoredConnection:
    account_id: str
    link_action: str
    credential: Secret
    scopes: list[str]


@dataclass(frozen=True)
class PendingOAuth:
    principal_id: str
    provider: str
    verifier: Secret
    redirect_uri: str


@dataclass(frozen=True)
class TermsAcceptance:
    accepted_at: str
    approval_id: str


class ConnectionStore(Protocol):
    """A principal's linked account at a provider, with its sealed account credential."""

    async def put_connection(
        self,
        *,
        principal_id: str,
        provider: str,
        account_id: str,
        link_action: str,
        credential: Secret,
        scopes: list[str],
    ) -> None: ...

    async def get_connection(self, *, principal_id: str, provider: str) -> StoredConnection | None: ...


class OAuthStateStore(Protocol):
    """Pending OAuth links: the `state` the provider echoes back, and the sealed PKCE verifier."""

    async def put_oauth_pending(
        self, *, state: str, principal_id: str, provider: str, verifier: Secret, redirect_uri: str
    ) -> None:
        """First write wins (a retried `start_oauth` keeps the verifier of the URL already shown)."""
        ...

    async def get_oauth_pending(self, state: str) -> PendingOAuth | None: ...


class TermsStore(Protocol):
    async def record_terms(
        self, *, principal_id: str, provider: str, terms_version: str, accepted_at: datetime, approval_id: str
    ) -> None: ...

    async def accepted_terms(
        self, *, principal_id: str, provider: str, terms_version: str
    ) -> TermsAcceptance | None: ...


# -- identity token replay -------------------------------------------------------------------------
class ReplayStore(Protocol):
    """Identity token ids (`jti`) per issuer: consumed once (single-use issuers) or retired."""

    async def consume(self, issuer: str, jti: str, exp: int, use_id: str) -> bool:
        """True when new, or when `use_id` names the same use (a retried check); False otherwise."""
        ...

    async def retire(self, issuer: str, jti: str, exp: int) -> None:
        """Any later presentation is a replay (the attested process ended)."""
        ...

    async def is_retired(self, issuer: str, jti: str) -> bool: ...


# -- Stripe webhook inbox --------------------------------------------------------------------------
class WebhookEventStore(Protocol):
    """Dedup of Stripe deliveries: every event id once, and one `ready` per (customer, setup)."""

    async def seen(self, event_id: str) -> bool: ...

    async def fired(self, customer: str, setup_intent: str) -> bool: ...

    async def record_event(self, event_id: str, kind: str, outcome: str) -> None: ...

    async def record_fired(self, customer: str, setup_intent: str, event_id: str, kind: str) -> bool:
        """Record the callback and the event in one transaction; False if another delivery won."""
        ...


# -- human logins ----------------------------------------------------------------------------------
LoginOutcome = Literal["ok", "wrong_code", "expired", "too_many_tries", "unknown"]


@dataclass(frozen=True)
class LoginCheck:
    outcome: LoginOutcome
    #: set when outcome == "ok"
    principal_id: str | None = None
    email: str | None = None
    tries_left: int = 0


@dataclass(frozen=True)
class LoginToken:
    principal_id: str
    email: str
    issued_at: datetime
    expires_at: datetime


class LoginStore(Protocol):
    """Pending one-time login codes (keyed hash only) and the login tokens issued for them
    (sha256 only): the store never sees a code or a token."""

    async def start_login(
        self,
        *,
        login_id: str,
        principal_id: str,
        email: str,
        code_hash: str,
        expires_at: datetime,
        max_tries: int = 5,
    ) -> None: ...

    async def check_login_code(self, *, login_id: str, code_hash: str) -> LoginCheck:
        """Compare in constant time. "ok" consumes the login (single use); a wrong code uses a try,
        and the last wrong try burns the login."""
        ...

    async def issue_token(
        self, *, token_hash: str, principal_id: str, email: str, expires_at: datetime
    ) -> None: ...

    async def find_token(self, token_hash: str) -> LoginToken | None:
        """The token's record when it is known, unexpired and not revoked; None otherwise."""
        ...

    async def revoke_token(self, token_hash: str) -> bool: ...

    async def revoke_principal_tokens(self, principal_id: str) -> int: ...


# -- agent freezes and session revocations ---------------------------------------------------------
@dataclass(frozen=True)
class AgentFreeze:
    principal_id: str
    agent: str
    frozen_at: datetime
    reason: str


@dataclass(frozen=True)
class SessionRevocation:
    session_id: str
    principal_id: str
    revoked_at: datetime
    reason: str


class FreezeStore(Protocol):
    """The durable half of the kill switch: written when a freeze or revocation is asked, read on
    every agent call, so a reset of the agent's or session's workflow cannot undo it."""

    async def freeze_agent(self, *, principal_id: str, agent: str, reason: str = "") -> None:
        """Idempotent; the first `frozen_at` is kept."""
        ...

    async def unfreeze_agent(self, *, principal_id: str, agent: str) -> bool: ...

    async def agent_freeze(self, *, principal_id: str, agent: str) -> AgentFreeze | None: ...

    async def revoke_session(self, *, session_id: str, principal_id: str, reason: str = "") -> None:
        """Permanent and idempotent: a revoked session never comes back."""
        ...

    async def session_revocation(self, session_id: str) -> SessionRevocation | None: ...

    async def standing(self, *, principal_id: str, session_ids: list[str], agents: list[str]) -> Standing:
        """Which of these sessions are revoked and which of the principal's agents are frozen, in one
        read (every agent call asks both)."""
        ...


@dataclass(frozen=True)
class Standing:
    """A caller's kill-switch record: revoked session ids and frozen agents, each in the order asked."""

    revoked_sessions: list[str]
    frozen_agents: list[str]


# -- approval page sessions (browsers) -------------------------------------------------------------
@dataclass(frozen=True)
class StoredPageSession:
    principal_id: str
    email: str
    #: None: a login session (every approval of the principal); else the one approval of its link
    approval_id: str | None
    #: the sealed approval link that opened it (link sessions only)
    sealed_link: str | None
    expires_at: datetime


class PageSessionStore(Protocol):
    """Browser sessions of the approval pages, by the sha256 of their cookie (never the cookie), the
    approval links already used (by hash), and the one decision per approval made through the pages.
    Shared by every API replica: a session opened on one works on all."""

    async def create_session(
        self,
        *,
        sid_hash: str,
        principal_id: str,
        email: str,
        approval_id: str | None,
        sealed_link: str | None,
        expires_at: datetime,
    ) -> None: ...

    async def open_link_session(
        self,
        *,
        link_hash: str,
        sid_hash: str,
        principal_id: str,
        email: str,
        approval_id: str,
        sealed_link: str,
        expires_at: datetime,
    ) -> bool:
        """Mark the link used and create its session in one transaction; False (nothing created)
        when the link was used before, on any replica."""
        ...

    async def link_used(self, link_hash: str) -> bool: ...

    async def get_session(self, sid_hash: str) -> StoredPageSession | None:
        """The live session; None when unknown, ended or expired."""
        ...

    async def end_session(self, sid_hash: str) -> None: ...

    async def claim_decision(self, *, approval_id: str, sid_hash: str) -> bool:
        """True for the first claim of `approval_id`."""
        ...

    async def release_decision(self, approval_id: str) -> None: ...


# -- the deployment's published key set --------------------------------------------------------------
@dataclass(frozen=True)
class PublishedKeySet:
    #: bumped by every publication (compare-and-set)
    version: int
    #: section -> [[kid, fingerprint], ...] in the key file's order (the last one signs / encrypts)
    fingerprints: dict[str, list[list[str]]]
    publisher: str
    published_at: datetime


class KeySetStore(Protocol):
    """Fingerprints of the key material every worker and API replica must share (public-key
    thumbprints and key check values, never a key), compared by each process when it starts."""

    async def published_keys(self) -> PublishedKeySet | None: ...

    async def publish_keys(
        self, *, fingerprints: dict[str, list[list[str]]], publisher: str, replaces: int
    ) -> bool:
        """Publish when the current version is still `replaces` (0: nothing published yet); False
        when another process published first (read again and decide again)."""


# -- the human's pending approvals (a read model kept by the workflows' gates) ----------------------
class PendingApprovalStore(Protocol):
    """Written when a gate opens (before the code is sent) and when it closes; read by the API."""

    async def open_approval(self, request: ApprovalRequest) -> None:
        """Idempotent; a closed approval stays closed."""
        ...

    async def close_approval(self, approval_id: str, *, closed_at: datetime | None = None) -> bool: ...

    async def waiting(self, workflow_id: str) -> bool:
        """Does the workflow have an open approval?"""
        ...

    async def waiting_among(self, workflow_ids: Sequence[str]) -> set[str]:
        """Which of these workflows have an open approval (one look for many followers)."""
        ...

    async def open_one(self, approval_id: str, *, now: datetime | None = None) -> ApprovalRequest | None:
        """The approval's request if it is open and unexpired."""
        ...

    async def pending(
        self, principal_id: str, *, cursor: str | None = None, limit: int = 100, now: datetime | None = None
    ) -> ApprovalPage:
        """One principal's open, unexpired approvals, oldest first; `cursor` from the previous page."""
        ...


class AccountStore(ConnectionStore, OAuthStateStore, TermsStore, Protocol):
    """What the account activities use: connections, OAuth state and terms together."""
