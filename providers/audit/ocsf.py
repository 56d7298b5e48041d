"""Audit records as OCSF-style API Activity events (class 6003), for a SIEM. See docs/audit.md."""

from __future__ import annotations

from typing import Any

from providers.audit.store import StoredAuditRecord, time_ms

OCSF_VERSION = "1.3.0"
CLASS_UID = 6003  # API Activity
CATEGORY_UID = 6  # Application Activity
CREATE, READ, UPDATE, DELETE, OTHER = 1, 2, 3, 4, 99
ACTIVITY_NAMES = {CREATE: "Create", READ: "Read", UPDATE: "Update", DELETE: "Delete", OTHER: "Other"}

#: every AuditAction's OCSF activity_id; an action missing here maps to Other (99)
ACTIVITY_BY_ACTION = {
    "request.received": CREATE,
    "authorization.decided": OTHER,
    "approval.requested": CREATE,
    "approval.granted": UPDATE,
    "approval.denied": UPDATE,
    "approval.forged_attempt": OTHER,
    "approval.timed_out": UPDATE,
    "terms.accepted": UPDATE,
    "account.created": CREATE,
    "account.linked": UPDATE,
    "account.link_refused": OTHER,
    "oauth.callback_ignored": OTHER,
    "payment_token.issued": CREATE,
    "payment_token.revoked": DELETE,
    "charge.made": CREATE,
    "charge.refunded": DELETE,
    "charge.kept": UPDATE,
    "resource.created": CREATE,
    "resource.removed": DELETE,
    "credential.minted": CREATE,
    "credential.rotated": UPDATE,
    "credential.revoked": DELETE,
    "session.opened": CREATE,
    "session.delegated": CREATE,
    "session.expired": DELETE,
    "session.revoked": DELETE,
    "limit.changed": UPDATE,
    "spend.alert": OTHER,
    "agent.frozen": UPDATE,
    "agent.unfrozen": UPDATE,
    "request.completed": UPDATE,
    "request.failed": UPDATE,
}
#: severity_id: 1 Informational, 3 Medium (refusals, failures), 4 High (a forged approval)
_SEVERITY = {"success": 1, "failure": 3, "refused": 3}


def to_ocsf(record: StoredAuditRecord, *, product_version: str = "0.1.0") -> dict[str, Any]:
    """One OCSF API Activity object. Fields with no OCSF attribute go to `unmapped`; None is omitted."""
    e = record.event
    activity_id = ACTIVITY_BY_ACTION.get(e.action, OTHER)
    severity_id = 4 if e.action == "approval.forged_attempt" else _SEVERITY[e.outcome]
    resources = [
        {"uid": uid, "type": kind}
        for uid, kind in (
            (e.resource_id, "resource"),
            (e.service_id, "service"),
            (e.credential_id, "credential"),
        )
        if uid
    ]
    actor: dict[str, Any] = {"app_name": "quartermaster"}
    if e.principal_id:
        actor["user"] = {"uid": e.principal_id, "type_id": 1, "type": "User"}
    if e.agent_chain:
        # the acting agent is the last of the attested chain; the full chain is in unmapped
        actor["app_uid"] = e.agent_chain[-1]
        actor["invoked_by"] = " > ".join(e.agent_chain)
    if e.session_ids:
        actor["session"] = {"uid": e.session_ids[-1]}
    unmapped = {
        "agent_chain": e.agent_chain or None,
        "session_ids": e.session_ids or None,
        "workflow_id": e.workflow_id,
        "run_id": e.run_id,
        "outcome": e.outcome,
        "amount": e.amount.model_dump(mode="json") if e.amount else None,
        "approved_by": e.approved_by,
        "details": e.details or None,
        "audit_seq": record.seq,
        "audit_hash": record.hash,
        "audit_prev_hash": record.prev_hash,
    }
    doc: dict[str, Any] = {
        "class_uid": CLASS_UID,
        "class_name": "API Activity",
        "category_uid": CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": ACTIVITY_NAMES[activity_id],
        "type_uid": CLASS_UID * 100 + activity_id,
        "time": time_ms(e.time),
        "severity_id": severity_id,
        "status_id": 1 if e.outcome == "success" else 2,
        "status": "Success" if e.outcome == "success" else "Failure",
        "status_detail": e.reason,
        "message": e.action,
        "actor": actor,
        "api": {
            "operation": e.action,
            "service": {"name": e.provider or "quartermaster"},
            "request": {"uid": e.request_id} if e.request_id else None,
        },
        "resources": resources or None,
        "cloud": {"provider": e.provider or "quartermaster"},
        "src_endpoint": {"svc_name": "quartermaster"},
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "Quartermaster", "vendor_name": "Quartermaster", "version": product_version},
            "uid": e.event_id,
            "correlation_uid": e.request_id or e.workflow_id,
            "original_time": e.time.isoformat().replace("+00:00", "Z"),
            "sequence": record.seq,
            "log_name": "audit",
        },
        "unmapped": unmapped,
    }
    cleaned: dict[str, Any] = _without_none(doc)
    return cleaned


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
