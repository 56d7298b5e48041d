"""The audit trail: append-only, hash-chained, behind the small `AuditStore` protocol, kept in the
one store of server-side state (`providers.store`, `QM_DATABASE_URL`)."""

from __future__ import annotations

from pathlib import Path

from providers.audit.sql_store import PostgresAuditStore, SqlAuditStore, SqliteAuditStore
from providers.audit.store import (
    AuditFilters,
    AuditStore,
    AuditStoreError,
    StoredAuditRecord,
    VerifyReport,
    canonical_json,
    chain_hash,
)

__all__ = [
    "AuditFilters",
    "AuditStore",
    "AuditStoreError",
    "PostgresAuditStore",
    "SqlAuditStore",
    "SqliteAuditStore",
    "StoredAuditRecord",
    "VerifyReport",
    "canonical_json",
    "chain_hash",
    "open_audit_store",
]


def open_audit_store(location: str | Path) -> AuditStore:
    """The audit trail of the store at `location` (`Settings.resolved_database_url`): a
    `postgresql://` DSN or a SQLite file path. Migrates the store to the current schema."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresAuditStore(text)
    return SqliteAuditStore(Path(text.removeprefix("sqlite://")))
