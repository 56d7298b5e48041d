"""The `record_audit` activity: append one audit event to the store, exactly once per event id."""

from __future__ import annotations

import asyncio
import sqlite3

from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.audit import AuditEvent
from providers.audit.store import AuditStore, AuditStoreError
from providers.store.database import StoreUnavailableError


class AuditActivities:
    """Activities over an `AuditStore` built in the worker (SQLite by default)."""

    def __init__(self, store: AuditStore) -> None:
        self._store = store

    @activity.defn(name="record_audit")
    async def record(self, event: AuditEvent) -> None:
        """Append `event`. A retry after a successful write finds the event id stored and writes nothing,
        so events must carry a deterministic `event_id` (workflow id + step)."""
        await self._append([event])

    @activity.defn(name="record_audit_batch")
    async def record_batch(self, events: list[AuditEvent]) -> None:
        """Append a workflow step's events in order, in one store transaction (one lock and one commit
        for the batch: docs/performance.md); each is still written once per event id, so a retry of a
        batch that was written writes nothing."""
        await self._append(events)

    async def _append(self, events: list[AuditEvent]) -> None:
        try:
            # the store is blocking (sqlite3 / a DB driver): keep it off the event loop
            written = await asyncio.to_thread(self._store.append_many, events)
        except AuditStoreError as exc:
            raise ApplicationError(str(exc), type="InvalidAuditEvent", non_retryable=True) from exc
        except (StoreUnavailableError, sqlite3.OperationalError) as exc:
            # a lock held past the busy timeout or a full disk: retry with the same event ids
            raise ApplicationError(
                "audit store is busy or unavailable", type="AuditStoreUnavailable"
            ) from exc
        for event, new in zip(events, written, strict=True):
            if not new:
                activity.logger.info("audit event already recorded (retry)", extra={"action": event.action})
