"""The audit trail's store: append-only, hash-chained, behind the small `AuditStore` protocol."""

from __future__ import annotations

from pathlib import Path

from providers.audit.sqlite_store import SqliteAuditStore
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
    "SqliteAuditStore",
    "StoredAuditRecord",
    "VerifyReport",
    "canonical_json",
    "chain_hash",
    "open_audit_store",
]


def open_audit_store(location: str | Path) -> AuditStore:
    """A store for `Settings.resolved_audit_db`: a `postgresql://` DSN or a SQLite file path."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        from providers.audit.postgres_store import PostgresAuditStore

        return PostgresAuditStore(text)
    return SqliteAuditStore(Path(text))
