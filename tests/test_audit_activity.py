"""`record_audit` on the real Temporal dev server: a retried activity writes its event once."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from activities.audit import AuditActivities
    from models.audit import AuditEvent
    from providers.audit import AuditFilters, SqliteAuditStore, StoredAuditRecord, VerifyReport
    from providers.audit.store import AuditStore, AuditStoreError


@workflow.defn(sandboxed=False)
class AuditProbeWorkflow:
    """Test-only: records the given events through the activity, one after another."""

    @workflow.run
    async def run(self, events: list[AuditEvent]) -> None:
        for event in events:
            await workflow.execute_activity(
                "record_audit",
                event,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=5),
            )


@workflow.defn(sandboxed=False)
class AuditBatchProbeWorkflow:
    """Test-only: records each given batch with one `record_audit_batch`, as `AuditTrail.flush` does."""

    @workflow.run
    async def run(self, batches: list[list[AuditEvent]]) -> None:
        for batch in batches:
            await workflow.execute_activity(
                "record_audit_batch",
                batch,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=50), maximum_attempts=5),
            )


class FailAfterWrite:
    """Wraps a real store: the first append of each event id writes, then raises (a crash after the
    commit, before the activity reports completion), so Temporal retries it."""

    def __init__(self, inner: SqliteAuditStore) -> None:
        self.inner = inner
        self.attempts: dict[str, int] = {}

    def append(self, event: AuditEvent) -> bool:
        self.attempts[event.event_id] = self.attempts.get(event.event_id, 0) + 1
        written = self.inner.append(event)
        if self.attempts[event.event_id] == 1:
            raise RuntimeError("worker lost after the audit write")
        return written

    def append_many(self, events: Sequence[AuditEvent]) -> list[bool]:
        key = ",".join(e.event_id for e in events)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        written = self.inner.append_many(events)
        if self.attempts[key] == 1:
            raise RuntimeError("worker lost after the audit write")
        return written

    def query(self, filters: AuditFilters | None = None) -> list[StoredAuditRecord]:
        return self.inner.query(filters)

    def verify(self) -> VerifyReport:
        return self.inner.verify()

    def iter_all(self) -> Iterator[StoredAuditRecord]:
        return self.inner.iter_all()

    def close(self) -> None:
        self.inner.close()


T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _event(wf_id: str, step: str, action: str) -> AuditEvent:
    return AuditEvent(
        event_id=f"{wf_id}:{step}",
        time=T0,
        action=action,
        principal_id="p0123456789abcdef0123",
        agent_chain=["agent:planner", "agent:sub"],
        workflow_id=wf_id,
        request_id="req-1",
    )


def _rows(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT seq, event_id FROM audit_records ORDER BY seq").fetchall()


async def _run_probe(
    client: Client, store: AuditStore, workflow: type, activity: str, arg: object, wf_id: str
) -> None:
    """Run one probe workflow to its end on a worker with the named audit activity over `store`."""
    task_queue = f"audit-{uuid.uuid4()}"
    activities = AuditActivities(store)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[workflow],
        activities=[activities.record if activity == "record_audit" else activities.record_batch],
    ):
        await client.execute_workflow(workflow.run, arg, id=wf_id, task_queue=task_queue)  # type: ignore[attr-defined]


async def test_retried_activity_writes_each_event_once(client: Client, tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite"
    store = FailAfterWrite(SqliteAuditStore(db))
    wf_id = f"audit-probe-{uuid.uuid4()}"
    events = [
        _event(wf_id, "received", "request.received"),
        _event(wf_id, "decided", "authorization.decided"),
    ]
    await _run_probe(client, store, AuditProbeWorkflow, "record_audit", events, wf_id)

    # each activity ran twice (first attempt failed after its write) ...
    assert store.attempts == {f"{wf_id}:received": 2, f"{wf_id}:decided": 2}
    # ... yet the file holds exactly one row per event, in workflow order, on an intact chain
    assert _rows(db) == [(1, f"{wf_id}:received"), (2, f"{wf_id}:decided")]
    assert SqliteAuditStore(db).verify().ok


async def test_retried_batch_writes_each_event_once_in_order(client: Client, tmp_path: Path) -> None:
    """A batch is one store transaction: a retry after its commit writes nothing more, and a batch that
    overlaps events already stored writes only the missing ones, in order, on an intact chain."""
    db = tmp_path / "audit.sqlite"
    store = FailAfterWrite(SqliteAuditStore(db))
    wf_id = f"audit-batch-{uuid.uuid4()}"
    steps = ["received", "decided", "created", "minted", "completed"]
    events = [_event(wf_id, step, "request.received") for step in steps]
    batches = [events[:3], events[1:]]  # the second batch repeats two events of the first
    await _run_probe(client, store, AuditBatchProbeWorkflow, "record_audit_batch", batches, wf_id)

    assert sorted(store.attempts.values()) == [2, 2]  # each batch failed once after its write
    assert _rows(db) == [(i + 1, f"{wf_id}:{step}") for i, step in enumerate(steps)]
    assert SqliteAuditStore(db).verify().ok


def test_batch_with_a_bad_event_writes_nothing(tmp_path: Path) -> None:
    """All or nothing: a batch whose last event is invalid leaves the store as it was."""
    store = SqliteAuditStore(tmp_path / "audit.sqlite")
    good = _event("wf-1", "received", "request.received")
    bad = AuditEvent(event_id="naive:1", time=datetime(2026, 5, 1, 12, 0), action="request.received")
    try:
        store.append_many([good, bad])
        raise AssertionError("a naive time must be refused")
    except AuditStoreError:
        pass
    assert _rows(tmp_path / "audit.sqlite") == []
    assert store.append_many([good]) == [True] and store.append_many([good]) == [False]


async def test_event_with_naive_time_fails_without_retry(client: Client, tmp_path: Path) -> None:
    db = tmp_path / "audit.sqlite"
    store = SqliteAuditStore(db)
    task_queue = f"audit-{uuid.uuid4()}"
    bad = AuditEvent(event_id="naive:1", time=datetime(2026, 5, 1, 12, 0), action="request.received")
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[AuditProbeWorkflow],
        activities=[AuditActivities(store).record],
    ):
        handle = await client.start_workflow(
            AuditProbeWorkflow.run, [bad], id=f"audit-naive-{uuid.uuid4()}", task_queue=task_queue
        )
        try:
            await handle.result()
            raise AssertionError("the workflow should fail")
        except WorkflowFailureError as err:
            cause = getattr(err.cause, "cause", None)  # ActivityError -> ApplicationError
            assert getattr(cause, "type", None) == "InvalidAuditEvent"
    history = [e async for e in handle.fetch_history_events()]
    started = [e for e in history if e.HasField("activity_task_started_event_attributes")]
    assert len(started) == 1 and started[0].activity_task_started_event_attributes.attempt == 1
    assert _rows(db) == []
