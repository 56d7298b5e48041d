"""Audit events: who did what, for whom, through which chain of agents, at what cost. Never a secret."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from models.money import Money

AuditAction = Literal[
    "request.received",
    "authorization.decided",
    "approval.requested",
    "approval.granted",
    "approval.denied",
    "approval.forged_attempt",
    "approval.timed_out",
    "terms.accepted",
    "account.created",
    "account.linked",
    "account.link_refused",
    "oauth.callback_ignored",
    "payment_token.issued",
    "payment_token.revoked",
    "charge.made",
    "charge.refunded",
    "charge.kept",
    "resource.created",
    "resource.removed",
    "credential.minted",
    "credential.rotated",
    "credential.revoked",
    "session.opened",
    "session.delegated",
    "session.expired",
    "session.revoked",
    "limit.changed",
    "spend.alert",
    "renewal.charged",
    "renewal.declined",
    "renewal.suspended",
    "renewal.cancelled",
    "agent.frozen",
    "agent.unfrozen",
    "request.completed",
    "request.failed",
    # a change sent without a valid authority proof (straight to Temporal), refused
    "authority.refused",
]


class AuditEvent(BaseModel):
    """One decision or side effect. `event_id` is deterministic (workflow id + step) so a retried
    activity writes it once."""

    model_config = ConfigDict(extra="forbid")

    event_id: str
    time: datetime
    action: AuditAction
    outcome: Literal["success", "failure", "refused"] = "success"
    reason: str | None = None
    principal_id: str | None = None
    #: the attested agent chain, root (the human's first agent) first
    agent_chain: list[str] = Field(default_factory=list)
    session_ids: list[str] = Field(default_factory=list)
    workflow_id: str | None = None
    run_id: str | None = None
    request_id: str | None = None
    provider: str | None = None
    service_id: str | None = None
    resource_id: str | None = None
    amount: Money | None = None
    approved_by: str | None = None
    credential_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
