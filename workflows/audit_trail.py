"""Workflow-side audit: events are buffered in workflow state and written in batches by the
`record_audit_batch` activity, at each point where the workflow stops (a human gate, the end).

Buffering loses nothing: workflow state is rebuilt from history, so a crash between `record` and
`flush` replays the same events. Event ids are `<workflow id>:<sequence>:<action>`, deterministic
across replays, so a retried activity or a replayed workflow writes each event once.
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
        self._buffer: list[AuditEvent] = []

    async def record(self, action: AuditAction, **fields: Any) -> None:
        """Buffer one event; `flush()` writes the buffer (and `record` does when it grows large)."""
        self._seq += 1
        event = AuditEvent(
            event_id=f"{self._workflow_id}:{self._seq}:{action}",
            time=workflow.now(),
            action=action,
            workflow_id=self._workflow_id,
            run_id=workflow.info().run_id,
            **{**self._common, **fields},
        )
        self._buffer.append(event)
        if len(self._buffer) >= 50:
            await self.flush()

    async def flush(self) -> None:
        """Write the buffered events with one activity (retried until it succeeds)."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        await workflow.execute_activity(
            "record_audit_batch",
            batch,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            summary=f"audit {len(batch)} events: {batch[0].action} .. {batch[-1].action}",
        )
