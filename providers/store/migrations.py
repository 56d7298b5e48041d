"""The store's schema, versioned; `migrate(db)` runs on every start and brings any older database up.

Version 1 is the audit trail exactly as `audit.sqlite` (SQLite `user_version` 1) and the PostgreSQL
audit database (`QM_AUDIT_DB`) had it, so an existing audit database *is* a version-1 store and is
upgraded in place. Version 2 adds every other concern. Version 3 adds the approval pages' browser
sessions (until then the API's own `pages.sqlite`) and the deployment's published key set. A SQLite
store created next to the per-host files of earlier releases (`audit.sqlite`, `connections.sqlite`,
`identity-replay.sqlite`, `webhooks.sqlite`, `pages.sqlite`) imports their rows once, through
SQLite, never by reading the files raw.

The version lives in `PRAGMA user_version` (SQLite) and in `qm_schema` (PostgreSQL); migrations run
in one write transaction (PostgreSQL: under an advisory lock), so replicas starting together migrate
once. Never edit a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from providers.store.database import Database, Dialect, Tx

#: advisory lock key for migrations ("qmschema")
_MIGRATION_LOCK = 0x716D736368656D61 & 0x7FFFFFFFFFFFFFFF

_AUDIT_COLUMNS = """
        event_id     TEXT    NOT NULL UNIQUE,
        time_ms      {big} NOT NULL,
        action       TEXT    NOT NULL,
        principal_id TEXT,
        provider     TEXT,
        request_id   TEXT,
        resource_id  TEXT,
        workflow_id  TEXT,
        event_json   TEXT    NOT NULL,
        prev_hash    TEXT    NOT NULL,
        hash         TEXT    NOT NULL)"""
_AUDIT_INDEXES = (
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit_records (time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_principal ON audit_records (principal_id, time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_provider ON audit_records (provider, time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_request ON audit_records (request_id)",
    "CREATE INDEX IF NOT EXISTS audit_by_resource ON audit_records (resource_id)",
)
AUDIT_V1_SQLITE = (
    "CREATE TABLE IF NOT EXISTS audit_records (\n        seq          INTEGER PRIMARY KEY,"
    + _AUDIT_COLUMNS.format(big="INTEGER"),
    *_AUDIT_INDEXES,
    """CREATE TABLE IF NOT EXISTS audit_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  INTEGER NOT NULL,
        hash TEXT    NOT NULL)""",
    # append-only by construction; the hash chain still catches anyone who drops these triggers
    """CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
)
AUDIT_V1_POSTGRES = (
    "CREATE TABLE IF NOT EXISTS audit_records (\n        seq          BIGINT PRIMARY KEY,"
    + _AUDIT_COLUMNS.format(big="BIGINT"),
    *_AUDIT_INDEXES,
    """CREATE TABLE IF NOT EXISTS audit_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  BIGINT  NOT NULL,
        hash TEXT    NOT NULL)""",
    """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'audit records are append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
    """CREATE OR REPLACE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
)

#: every concern but the audit trail; portable DDL (times are epoch seconds, flags 0/1)
V2_TABLES = (
    # linked accounts; `credential` is sealed (AES-GCM, the seal key) before it is written
    """CREATE TABLE IF NOT EXISTS connections (
        principal_id TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
        link_action TEXT NOT NULL, credential TEXT NOT NULL, scopes TEXT NOT NULL,
        updated_at TEXT NOT NULL, PRIMARY KEY (principal_id, provider))""",
    # pending OAuth links; `verifier` (PKCE) is sealed
    """CREATE TABLE IF NOT EXISTS oauth_pending (
        state TEXT PRIMARY KEY, principal_id TEXT NOT NULL, provider TEXT NOT NULL,
        verifier TEXT NOT NULL, redirect_uri TEXT NOT NULL, created_at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS terms_acceptances (
        principal_id TEXT NOT NULL, provider TEXT NOT NULL, terms_version TEXT NOT NULL,
        accepted_at TEXT NOT NULL, approval_id TEXT NOT NULL,
        PRIMARY KEY (principal_id, provider, terms_version))""",
    # identity token ids: consumed (single-use issuers) or retired (the attested process ended)
    """CREATE TABLE IF NOT EXISTS identity_jti (
        issuer TEXT NOT NULL, jti TEXT NOT NULL, exp BIGINT NOT NULL, state TEXT NOT NULL,
        use_id TEXT, PRIMARY KEY (issuer, jti))""",
    "CREATE INDEX IF NOT EXISTS identity_jti_by_exp ON identity_jti (exp)",
    """CREATE TABLE IF NOT EXISTS webhook_events (
        id TEXT PRIMARY KEY, type TEXT NOT NULL, outcome TEXT NOT NULL, received_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS webhook_ready (
        customer TEXT NOT NULL, setup_intent TEXT NOT NULL, event_id TEXT NOT NULL,
        fired_at BIGINT NOT NULL, PRIMARY KEY (customer, setup_intent))""",
    # human logins: one-time codes (keyed hash only) and issued login tokens (sha256 only)
    """CREATE TABLE IF NOT EXISTS login_codes (
        login_id TEXT PRIMARY KEY, principal_id TEXT NOT NULL, email TEXT NOT NULL,
        code_hash TEXT NOT NULL, expires_at BIGINT NOT NULL, tries INTEGER NOT NULL,
        max_tries INTEGER NOT NULL, consumed INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS login_tokens (
        token_hash TEXT PRIMARY KEY, principal_id TEXT NOT NULL, email TEXT NOT NULL,
        issued_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, revoked INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS login_tokens_by_principal ON login_tokens (principal_id)",
    # the kill switch's durable half: checked on every agent call, untouched by a workflow reset
    """CREATE TABLE IF NOT EXISTS agent_freezes (
        principal_id TEXT NOT NULL, agent TEXT NOT NULL, frozen_at BIGINT NOT NULL,
        reason TEXT NOT NULL, PRIMARY KEY (principal_id, agent))""",
    """CREATE TABLE IF NOT EXISTS session_revocations (
        session_id TEXT PRIMARY KEY, principal_id TEXT NOT NULL, revoked_at BIGINT NOT NULL,
        reason TEXT NOT NULL)""",
)

#: version 4: the human's pending approvals, kept by the workflows' gates (providers/store/approvals.py); the
#: request is sealed; rows are closed, never deleted, so a late retry cannot reopen one
V4_TABLES = (
    """CREATE TABLE IF NOT EXISTS pending_approvals (
        approval_id TEXT PRIMARY KEY, principal_id TEXT NOT NULL, workflow_id TEXT NOT NULL,
        kind TEXT NOT NULL, requested_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL,
        request TEXT NOT NULL, closed_ms BIGINT)""",
    "CREATE INDEX IF NOT EXISTS pending_approvals_by_principal "
    "ON pending_approvals (principal_id, closed_ms, requested_ms, approval_id)",
    "CREATE INDEX IF NOT EXISTS pending_approvals_by_workflow ON pending_approvals (workflow_id, closed_ms)",
)

#: the per-host SQLite files of earlier releases: (file name, [(table there, table here)])
LEGACY_FILES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("audit.sqlite", (("audit_records", "audit_records"), ("audit_head", "audit_head"))),
    (
        "connections.sqlite",
        (
            ("connections", "connections"),
            ("oauth_pending", "oauth_pending"),
            ("terms_acceptances", "terms_acceptances"),
        ),
    ),
    ("identity-replay.sqlite", (("jti", "identity_jti"),)),
    ("webhooks.sqlite", (("events", "webhook_events"), ("ready", "webhook_ready"))),
)


#: version 3: the approval pages' sessions, shared by every API replica (times are epoch seconds)
V3_TABLES = (
    """CREATE TABLE IF NOT EXISTS page_sessions (
        sid_hash TEXT PRIMARY KEY, principal_id TEXT NOT NULL, email TEXT NOT NULL, approval_id TEXT,
        sealed_link TEXT, expires_at BIGINT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS page_sessions_by_expiry ON page_sessions (expires_at)",
    """CREATE TABLE IF NOT EXISTS approval_links_used (
        link_hash TEXT PRIMARY KEY, used_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS page_decisions (
        approval_id TEXT PRIMARY KEY, sid_hash TEXT NOT NULL, decided_at BIGINT NOT NULL)""",
    # fingerprints of the key material every process must share (docs/decisions.md, issue 15)
    """CREATE TABLE IF NOT EXISTS published_keys (
        id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, fingerprints TEXT NOT NULL,
        publisher TEXT NOT NULL, published_at BIGINT NOT NULL)""",
)

#: the API's page-session file of the release before version 3
LEGACY_PAGE_FILES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "pages.sqlite",
        (
            ("approval_links_used", "approval_links_used"),
            ("page_sessions", "page_sessions"),
            ("page_decisions", "page_decisions"),
        ),
    ),
)


@dataclass(frozen=True)
class Migration:
    version: int
    summary: str
    sqlite: tuple[str, ...] = ()
    postgresql: tuple[str, ...] = ()
    #: extra work after the DDL (data moves); gets the transaction and the database
    after: tuple[Callable[[Tx, Database], None], ...] = field(default=())


def _import_legacy_sqlite(tx: Tx, db: Database) -> None:
    """Copy rows from the earlier per-host files beside a new SQLite store, read through SQLite."""
    _import_files(tx, db, LEGACY_FILES)


def _import_legacy_pages(tx: Tx, db: Database) -> None:
    """The API's `pages.sqlite`: used links must stay used (a link must never open twice)."""
    _import_files(tx, db, LEGACY_PAGE_FILES)


def _import_files(tx: Tx, db: Database, files: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]) -> None:
    path = getattr(db, "path", None)
    if not isinstance(path, Path):
        return
    for name, tables in files:
        legacy = path.parent / name
        if not legacy.exists() or legacy.resolve() == path.resolve():
            continue
        # ATTACH is refused inside a transaction: a second connection reads the old file instead
        with closing(sqlite3.connect(legacy, timeout=30)) as old:
            present = {r[0] for r in old.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for there, here in tables:
                if there not in present:
                    continue
                for row in old.execute(f"SELECT * FROM {there}"):  # noqa: S608 - names from LEGACY_FILES
                    marks = ", ".join("?" * len(row))
                    tx.execute(f"INSERT OR IGNORE INTO {here} VALUES ({marks})", row)  # noqa: S608


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "audit trail", sqlite=AUDIT_V1_SQLITE, postgresql=AUDIT_V1_POSTGRES),
    Migration(
        2,
        "accounts, OAuth state, terms, replay guard, webhook inbox, logins, freezes",
        sqlite=V2_TABLES,
        postgresql=V2_TABLES,
        after=(_import_legacy_sqlite,),
    ),
    Migration(
        3,
        "approval page sessions, the published key set",
        sqlite=V3_TABLES,
        postgresql=V3_TABLES,
        after=(_import_legacy_pages,),
    ),
    Migration(4, "pending approvals read model", sqlite=V4_TABLES, postgresql=V4_TABLES),
)
LATEST = MIGRATIONS[-1].version


def schema_version(tx: Tx) -> int:
    """The database's version; a PostgreSQL audit database from before `qm_schema` is version 1."""
    if tx.dialect == "sqlite":
        return int(tx.execute("PRAGMA user_version")[0][0])
    tx.execute(
        "CREATE TABLE IF NOT EXISTS qm_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER)"
    )
    row = tx.execute("SELECT version FROM qm_schema WHERE id = 1")
    if row:
        return int(row[0][0])
    legacy = tx.execute("SELECT to_regclass('audit_records') IS NOT NULL")
    return 1 if legacy and legacy[0][0] else 0


def _set_version(tx: Tx, version: int) -> None:
    if tx.dialect == "sqlite":
        tx.execute(f"PRAGMA user_version = {int(version)}")
    else:
        tx.execute(
            "INSERT INTO qm_schema (id, version) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            (version,),
        )


def migrate(db: Database, *, target: int = LATEST) -> int:
    """Apply every migration above the database's version up to `target`; returns the new version."""

    def work(tx: Tx) -> int:
        if tx.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        current = schema_version(tx)
        if current > LATEST:
            raise RuntimeError(f"the store is at schema version {current}; this release knows {LATEST}")
        for m in MIGRATIONS:
            if current < m.version <= target:
                for statement in _ddl(m, tx.dialect):
                    tx.execute(statement)
                for step in m.after:
                    step(tx, db)
                _set_version(tx, m.version)
                current = m.version
        return current

    return db.run_sync(work, write=True)


def _ddl(m: Migration, dialect: Dialect) -> tuple[str, ...]:
    return m.sqlite if dialect == "sqlite" else m.postgresql
