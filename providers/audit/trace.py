"""The story of one purchase: every event of a request (or of a resource's requests), in order."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel

from models.audit import AuditEvent
from models.money import Money
from providers.audit.store import AuditFilters, AuditStore, StoredAuditRecord

APPROVAL_ACTIONS = frozenset(
    {
        "approval.requested",
        "approval.granted",
        "approval.denied",
        "approval.forged_attempt",
        "approval.timed_out",
    }
)


class TraceApproval(BaseModel):
    action: str
    seq: int
    approved_by: str | None = None
    outcome: str
    reason: str | None = None


class TraceCharge(BaseModel):
    seq: int
    amount: Money | None = None
    provider: str | None = None
    outcome: str


class AuditTrace(BaseModel):
    """What `qm audit trace` prints. `chain` is the human (principal id) followed by the agents."""

    subject: str
    request_ids: list[str]
    resource_ids: list[str]
    principal_id: str | None
    chain: list[str]
    approvals: list[TraceApproval]
    charges: list[TraceCharge]
    credential_ids: list[str]
    records: list[StoredAuditRecord]


def _related(store: AuditStore, subject: str) -> dict[int, StoredAuditRecord]:
    found: dict[int, StoredAuditRecord] = {}
    for key in ("request_id", "resource_id", "workflow_id"):
        for record in store.query(AuditFilters.model_validate({key: subject})):
            found[record.seq] = record
    return found


def build_trace(store: AuditStore, subject: str) -> AuditTrace | None:
    """Events whose request, resource or workflow id is `subject`, widened to every event of the
    requests found (so a resource id also brings its `request.received`). None when nothing matches."""
    direct = _related(store, subject)
    if not direct:
        return None
    records = dict(direct)
    for request_id in {r.event.request_id for r in direct.values() if r.event.request_id}:
        for record in store.query(AuditFilters(request_id=request_id)):
            records[record.seq] = record
    # time first (workflow time is causal within a workflow); seq breaks ties and cross-worker skew
    ordered = sorted(records.values(), key=lambda r: (r.event.time, r.seq))
    events = [r.event for r in ordered]
    return AuditTrace(
        subject=subject,
        request_ids=_unique(e.request_id for e in events),
        resource_ids=_unique(e.resource_id for e in events),
        principal_id=next((e.principal_id for e in events if e.principal_id), None),
        chain=_chain(events),
        approvals=[
            TraceApproval(
                action=r.event.action,
                seq=r.seq,
                approved_by=r.event.approved_by,
                outcome=r.event.outcome,
                reason=r.event.reason,
            )
            for r in ordered
            if r.event.action in APPROVAL_ACTIONS
        ],
        charges=[
            TraceCharge(seq=r.seq, amount=r.event.amount, provider=r.event.provider, outcome=r.event.outcome)
            for r in ordered
            if r.event.action == "charge.made"
        ],
        credential_ids=_unique(e.credential_id for e in events),
        records=ordered,
    )


def _chain(events: list[AuditEvent]) -> list[str]:
    """The principal followed by the agent chain of the request (the longest one attested)."""
    received = [e for e in events if e.action == "request.received" and e.agent_chain]
    agents = (
        received[0].agent_chain if received else max((e.agent_chain for e in events), key=len, default=[])
    )
    principal = next((e.principal_id for e in events if e.principal_id), None)
    return ([principal] if principal else []) + list(agents)


def _unique(values: Iterable[str | None]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v and v not in out:
            out.append(v)
    return out
