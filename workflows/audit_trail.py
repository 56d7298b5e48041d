"""Workflow-side audit: events are recorded by the `record_audit` activity without blocking the flow.

Event ids are `<workflow id>:<sequence>:<action>`, deterministic across replays, so a retried activity
or a replayed workflow writes each event once.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from models.audit import AuditAction, AuditEvent


class AuditTrail:
    def __init__(self, *, workflow_id: str, **common: Any) -> None:
        self._workflow_id = workflow_id
        self._common = common
        self._seq = 0
        self._pending: list[workflow.ActivityHandle[None]] = []

    async def record(self, action: AuditAction, **fields: Any) -> None:
        """Start recording one event; `flush()` waits for all of them."""
        self._seq += 1
        event = AuditEvent(
            event_id=f"{self._workflow_id}:{self._seq}:{action}",
            time=workflow.now(),
            action=action,
            workflow_id=self._workflow_id,
            run_id=workflow.info().run_id,
            **{**self._common, **fields},
        )
        self._pending.append(
            workflow.start_activity(
                "record_audit",
                event,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                summary=f"audit {action}",
            )
        )
        if len(self._pending) >= 20:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        for handle in pending:
            await handle
