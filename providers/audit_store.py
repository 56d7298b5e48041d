"""Import path named in the audit issue; the implementation lives in the `providers.audit` package."""

from providers.audit import (
    AuditFilters,
    AuditStore,
    AuditStoreError,
    SqliteAuditStore,
    StoredAuditRecord,
    VerifyReport,
)

__all__ = [
    "AuditFilters",
    "AuditStore",
    "AuditStoreError",
    "SqliteAuditStore",
    "StoredAuditRecord",
    "VerifyReport",
]
