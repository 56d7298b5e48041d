"""Audit records as OCSF 1.7.0 events, for a SIEM. See docs/audit.md for the mapping.

Two classes: **Authorize Session** (3003, Identity & Access Management) for the grants of authority to
an agent (`session.opened`, `session.delegated`: the privileges are the session's allowed services),
and **API Activity** (6003, Application Activity) for every other action. No profile is used, so the
events carry no profile attribute (no `cloud`: Quartermaster is not a cloud provider) and no
`metadata.profiles`. The agents are OCSF `agent` objects in `src_endpoint.agent_list` (the attested
chain, root first); OCSF 1.7 has no delegation object, so the chain is also `actor.invoked_by`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from models.session import agent_workflow_id
from providers.audit.store import StoredAuditRecord, time_ms

OCSF_VERSION = "1.7.0"
API_ACTIVITY, APPLICATION_ACTIVITY = 6003, 6
AUTHORIZE_SESSION, IAM = 3003, 3
CLASSES = {
    API_ACTIVITY: ("API Activity", APPLICATION_ACTIVITY, "Application Activity"),
    AUTHORIZE_SESSION: ("Authorize Session", IAM, "Identity & Access Management"),
}
CREATE, READ, UPDATE, DELETE, OTHER = 1, 2, 3, 4, 99
ACTIVITY_NAMES = {CREATE: "Create", READ: "Read", UPDATE: "Update", DELETE: "Delete", OTHER: "Other"}
#: Authorize Session's activity: the new session is assigned privileges (its allowed services)
ASSIGN_PRIVILEGES = 1

#: the actions that grant an agent authority: Authorize Session events
GRANT_ACTIONS = frozenset({"session.opened", "session.delegated"})

#: every other AuditAction's API Activity activity_id; an action missing here maps to Other (99)
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
    "session.expired": DELETE,
    "session.revoked": DELETE,
    "limit.changed": UPDATE,
    "spend.alert": OTHER,
    "agent.frozen": UPDATE,
    "agent.unfrozen": UPDATE,
    "request.completed": UPDATE,
    "request.failed": UPDATE,
    "authority.refused": OTHER,
}
#: severity_id: 1 Informational, 3 Medium (refusals, failures), 4 High (a forged approval)
_SEVERITY = {"success": 1, "failure": 3, "refused": 3}
#: OCSF `agent.type_id` 99 (Other): 1.7's agent types are sensors (EDR, DLP, ...), none an AI agent
AGENT_TYPE = {"type_id": 99, "type": "AI Agent"}
PRODUCT = "Quartermaster"
try:
    PRODUCT_VERSION = version("quartermaster")
except PackageNotFoundError:  # running from a source tree that was never installed
    PRODUCT_VERSION = "0"


def to_ocsf(record: StoredAuditRecord, *, product_version: str = PRODUCT_VERSION) -> dict[str, Any]:
    """One OCSF 1.7.0 event. Fields with no OCSF attribute go to `unmapped`; None is omitted."""
    e = record.event
    if e.action in GRANT_ACTIONS and e.principal_id:
        class_uid, activity_id = AUTHORIZE_SESSION, ASSIGN_PRIVILEGES
        activity_name = "Assign Privileges"
    else:
        class_uid = API_ACTIVITY
        activity_id = ACTIVITY_BY_ACTION.get(e.action, OTHER)
        activity_name = ACTIVITY_NAMES[activity_id]
    class_name, category_uid, category_name = CLASSES[class_uid]
    severity_id = 4 if e.action == "approval.forged_attempt" else _SEVERITY[e.outcome]
    doc: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "type_name": f"{class_name}: {activity_name}",
        "time": time_ms(e.time),
        "severity_id": severity_id,
        "status_id": 1 if e.outcome == "success" else 2,
        "status": "Success" if e.outcome == "success" else "Failure",
        "status_detail": e.reason,
        "message": e.action,
        "actor": _actor(record),
        "src_endpoint": _src_endpoint(record),
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": PRODUCT, "vendor_name": PRODUCT, "version": product_version},
            "uid": e.event_id,
            "correlation_uid": e.request_id or e.workflow_id,
            "original_time": e.time.isoformat().replace("+00:00", "Z"),
            "sequence": record.seq,
            "log_name": "audit",
            "event_code": e.action,
        },
        "unmapped": _unmapped(record),
    }
    if class_uid == AUTHORIZE_SESSION:
        doc.update(_authorize_session(record))
    else:
        doc["api"] = {
            "operation": e.action,
            "service": {"name": e.provider or "quartermaster"},
            "request": {"uid": e.request_id} if e.request_id else None,
        }
        resources = [
            {"uid": uid, "type": kind}
            for uid, kind in (
                (e.resource_id, "resource"),
                (e.service_id, "service"),
                (e.credential_id, "credential"),
            )
            if uid
        ]
        doc["resources"] = resources or None
    cleaned: dict[str, Any] = _without_none(doc)
    return cleaned


def _agents(record: StoredAuditRecord) -> list[dict[str, Any]]:
    """The attested chain as OCSF `agent` objects, root first; `uid` is the agent's entity id."""
    e = record.event
    out = []
    for name in e.agent_chain:
        agent: dict[str, Any] = {"name": name, **AGENT_TYPE, "vendor_name": PRODUCT}
        if e.principal_id:
            agent["uid"] = agent_workflow_id(e.principal_id, name)
        out.append(agent)
    return out


def _actor(record: StoredAuditRecord) -> dict[str, Any]:
    """The human principal (`user`), the acting agent (`app_name`, last of the chain), the chain."""
    e = record.event
    actor: dict[str, Any] = {"app_name": "quartermaster"}
    if e.principal_id:
        actor["user"] = _user(e.principal_id)
    if e.agent_chain:
        actor["app_name"] = e.agent_chain[-1]
        if e.principal_id:
            actor["app_uid"] = agent_workflow_id(e.principal_id, e.agent_chain[-1])
        actor["invoked_by"] = " > ".join(e.agent_chain)
    if e.session_ids:
        actor["session"] = {"uid": e.session_ids[-1], "issuer": "quartermaster"}
    return actor


def _user(principal_id: str) -> dict[str, Any]:
    return {"uid": principal_id, "type_id": 1, "type": "User"}


def _src_endpoint(record: StoredAuditRecord) -> dict[str, Any]:
    """Where the activity came from as Quartermaster knows it: the acting agent, or Quartermaster
    itself for steps it takes on its own (timeouts, compensation, webhooks)."""
    e = record.event
    agents = _agents(record)
    if agents:
        acting = agents[-1]
        return {
            "name": acting["name"],
            "uid": acting.get("uid", acting["name"]),
            "svc_name": "quartermaster",
            "agent_list": agents,
        }
    return {"name": "quartermaster", "uid": e.workflow_id or "quartermaster", "svc_name": "quartermaster"}


def _authorize_session(record: StoredAuditRecord) -> dict[str, Any]:
    """The grant: `user` the principal the session acts for, `session` the new session, `privileges`
    its allowed services (or, for a record from before they were audited, `group` naming it)."""
    e = record.event
    assert e.principal_id is not None
    out: dict[str, Any] = {"user": _user(e.principal_id)}
    if e.session_ids:
        out["session"] = {"uid": e.session_ids[-1], "issuer": "quartermaster"}
    services = e.details.get("allowed_services")
    if isinstance(services, list) and services:
        out["privileges"] = [str(s) for s in services]
    else:  # OCSF wants exactly one of privileges or group
        out["group"] = {"name": "quartermaster session", "uid": e.session_ids[-1] if e.session_ids else None}
    return out


def _unmapped(record: StoredAuditRecord) -> dict[str, Any]:
    e = record.event
    return {
        "agent_chain": e.agent_chain or None,
        "session_ids": e.session_ids or None,
        "workflow_id": e.workflow_id,
        "run_id": e.run_id,
        "outcome": e.outcome,
        "provider": e.provider,
        "amount": e.amount.model_dump(mode="json") if e.amount else None,
        "approved_by": e.approved_by,
        "details": e.details or None,
        "audit_seq": record.seq,
        "audit_hash": record.hash,
        "audit_prev_hash": record.prev_hash,
    }


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value
