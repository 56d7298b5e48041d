"""The one store of Quartermaster's server-side state outside Temporal, chosen by `QM_DATABASE_URL`:
a SQLite file under the data directory (embedded default) or PostgreSQL (production, every worker and
API replica pointed at the same database). One small interface per concern (`interfaces.py`), each
implemented once in portable SQL over either backend (`database.py`); the schema is versioned and
migrated on open (`migrations.py`).

    attribute      interface                         holds
    connections    ConnectionStore                   linked accounts, sealed account credentials
    oauth          OAuthStateStore                   pending OAuth state, sealed PKCE verifiers
    terms          TermsStore                        terms acceptances
    replay         ReplayStore                       identity token ids, consumed or retired
    webhooks       WebhookEventStore                 Stripe webhook delivery dedup
    logins         LoginStore                        human login codes and login tokens (hashes)
    freezes        FreezeStore                       agent freezes, session revocations
    pages          PageSessionStore                  approval pages' browser sessions, used links
    keys           KeySetStore                       fingerprints of the deployment's key material
    approvals      PendingApprovalStore              the human's pending approvals (sealed), paged
    audit          providers.audit.AuditStore (sync) the hash-chained audit trail

Usage (the API; the worker does the same in `worker.build_activities`):

    store = open_store(settings.resolved_database_url, sealer=SecretBox(keyring))
    # human login: keep only a keyed hash of the one-time code and a sha256 of the issued token
    await store.logins.start_login(login_id=lid, principal_id=pid, email=email,
                                   code_hash=hmac_sha256(login_key, code), expires_at=now + 10 min)
    check = await store.logins.check_login_code(login_id=lid, code_hash=hmac_sha256(login_key, code))
    if check.outcome == "ok":
        await store.logins.issue_token(token_hash=token_hash(token), principal_id=check.principal_id,
                                       email=check.email, expires_at=now + 30 days)
    human = await store.logins.find_token(token_hash(bearer))      # None: unknown/expired/revoked
    # kill switch: write on freeze/revoke, read on every agent call (a workflow reset cannot undo it)
    await store.freezes.freeze_agent(principal_id=pid, agent="planner", reason="principal froze it")
    if await store.freezes.agent_freeze(principal_id=pid, agent=agent) is not None: refuse
    if await store.freezes.session_revocation(session_id) is not None: refuse
    store.close()

Never read the store's own files with plain `open()` in a process that uses it (docs/decisions.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from providers.store.accounts import SqlConnections
from providers.store.approvals import ApprovalPage, InvalidCursorError, SqlPendingApprovals
from providers.store.database import (
    Database,
    PostgresDatabase,
    SqliteDatabase,
    StoreUnavailableError,
    open_database,
)
from providers.store.identity import SqlFreezes, SqlLogins, SqlReplayGuard
from providers.store.interfaces import (
    AgentFreeze,
    ConnectionStore,
    FreezeStore,
    KeySetStore,
    LoginCheck,
    LoginStore,
    LoginToken,
    OAuthStateStore,
    PageSessionStore,
    PendingApprovalStore,
    PendingOAuth,
    PublishedKeySet,
    ReplayStore,
    Sealer,
    SessionRevocation,
    StoredConnection,
    StoredPageSession,
    TermsAcceptance,
    TermsStore,
    WebhookEventStore,
)
from providers.store.migrations import LATEST, migrate
from providers.store.pages import SqlKeySets, SqlPageSessions
from providers.store.webhooks import SqlWebhookEvents

if TYPE_CHECKING:
    from providers.audit.sql_store import SqlAuditStore

__all__ = [
    "LATEST",
    "AgentFreeze",
    "ApprovalPage",
    "ConnectionStore",
    "Database",
    "FreezeStore",
    "InvalidCursorError",
    "KeySetStore",
    "LoginCheck",
    "LoginStore",
    "LoginToken",
    "OAuthStateStore",
    "PageSessionStore",
    "PendingApprovalStore",
    "PendingOAuth",
    "PostgresDatabase",
    "PublishedKeySet",
    "ReplayStore",
    "Sealer",
    "SessionRevocation",
    "SqliteDatabase",
    "Store",
    "StoreUnavailableError",
    "StoredConnection",
    "StoredPageSession",
    "TermsAcceptance",
    "TermsStore",
    "WebhookEventStore",
    "open_store",
    "token_hash",
]


@dataclass
class Store:
    """Every concern of the store over one database."""

    db: Database
    sealer: Sealer | None = None
    connections: SqlConnections = field(init=False)
    replay: SqlReplayGuard = field(init=False)
    webhooks: SqlWebhookEvents = field(init=False)
    logins: SqlLogins = field(init=False)
    freezes: SqlFreezes = field(init=False)
    pages: SqlPageSessions = field(init=False)
    keys: SqlKeySets = field(init=False)
    approvals: SqlPendingApprovals = field(init=False)
    audit: SqlAuditStore = field(init=False)

    def __post_init__(self) -> None:
        from providers.audit.sql_store import SqlAuditStore  # the audit package imports this one

        self.connections = SqlConnections(self.db, self.sealer)
        self.replay = SqlReplayGuard(self.db)
        self.webhooks = SqlWebhookEvents(self.db)
        self.logins = SqlLogins(self.db)
        self.freezes = SqlFreezes(self.db)
        self.pages = SqlPageSessions(self.db)
        self.keys = SqlKeySets(self.db)
        self.approvals = SqlPendingApprovals(self.db, self.sealer)
        self.audit = SqlAuditStore(self.db, migrated=True)

    @property
    def oauth(self) -> OAuthStateStore:
        return self.connections

    @property
    def terms(self) -> TermsStore:
        return self.connections

    def close(self) -> None:
        self.db.close()


def open_store(url: str | Path, *, sealer: Sealer | None = None) -> Store:
    """Open (and migrate) the store at `url`: `postgresql://...`, `sqlite:///path` or a file path.
    Without a `sealer` the account credentials can be neither written nor read."""
    db = open_database(url)
    migrate(db)
    return Store(db, sealer)


def token_hash(token: str) -> str:
    """What the store keeps of a bearer token (login tokens): its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()
