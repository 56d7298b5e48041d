"""What an approval is about, in facts a human can check, and the hash that binds a decision to them.

`approval_facts` gathers, from the workflow's *current* pending approval and the live state around it,
everything the approval page shows: who asks (principal, agent chain, session and its remaining
budget), what (provider, service, plan, configuration), how much (now, recurring, interval), the
effect on this month's cap (spent and limit, before and after), the terms version, the credential's
scopes and lifetime, and the request id. `view_hash` is sha256 over the canonical JSON of those facts.

The page embeds the hash of what it showed; a decision (page or `POST /v1/approvals/{id}/decision`
with `view_hash`) is accepted only when the hash recomputed at that moment is the same, so a price, a
configuration, a cap or a session budget that changed after the page was shown voids the approval
(`APPROVAL_CHANGED`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from temporalio.service import RPCError

from models.approval import ApprovalKind, ApprovalRequest
from models.errors import QuartermasterError
from models.forecast import QuoteForecast
from models.money import Money
from models.request import ProvisionRequest
from models.session import SessionState
from quartermaster.api.services import ApiServices
from quartermaster.orchestration.forecast import quote_forecast
from quartermaster.orchestration.requests import RequestOwner


class SessionFacts(BaseModel):
    session_id: str
    agent_chain: list[str]
    budget: Money
    spent: Money | None = None
    remaining: Money | None = None
    expires_at: datetime | None = None


class CapEffect(BaseModel):
    """This month's spend at one provider (or a limit change's before/after)."""

    provider: str
    month: str
    limit: Money
    spent: Money
    reserved: Money
    #: spent + reserved + what this approval adds
    after: Money
    #: the limit once this approval applies (limit changes and raised spend limits)
    limit_after: Money | None = None
    over_limit: bool = False


class ApprovalFacts(BaseModel):
    approval_id: str
    kind: ApprovalKind
    workflow_id: str
    summary: str
    requested_at: datetime
    expires_at: datetime
    principal_email: str
    request_id: str | None = None
    agent_chain: list[str] = Field(default_factory=list)
    session: SessionFacts | None = None
    provider: str | None = None
    service_id: str | None = None
    service_description: str | None = None
    plan: str | None = None
    name: str | None = None
    configuration: dict[str, Any] = Field(default_factory=dict)
    due_now: Money | None = None
    recurring: Money | None = None
    interval: str | None = None
    reversible: bool | None = None
    terms_version: str | None = None
    tos_url: str | None = None
    scopes: list[str] = Field(default_factory=list)
    credential_ttl_seconds: int | None = None
    cap: CapEffect | None = None
    #: a recurring purchase: the future months its renewals would push over the cap (docs/billing.md)
    forecast: QuoteForecast | None = None
    details: dict[str, Any] = Field(default_factory=dict)


def view_hash(facts: ApprovalFacts) -> str:
    """sha256 over the canonical JSON (sorted keys, no spaces) of every fact the page shows."""
    canonical = json.dumps(facts.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


_START_INPUTS: dict[str, ProvisionRequest] = {}


async def provision_request(svc: ApiServices, workflow_id: str) -> ProvisionRequest | None:
    """The request a provisioning workflow was started with (its first history event; never changes)."""
    if workflow_id in _START_INPUTS:
        return _START_INPUTS[workflow_id]
    handle = svc.temporal.get_workflow_handle(workflow_id)
    try:
        async for event in handle.fetch_history_events():
            attrs = event.workflow_execution_started_event_attributes
            (req,) = await svc.temporal.data_converter.decode(list(attrs.input.payloads), [ProvisionRequest])
            if len(_START_INPUTS) > 1000:
                _START_INPUTS.clear()
            _START_INPUTS[workflow_id] = req
            return req if isinstance(req, ProvisionRequest) else None
    except RPCError:
        return None
    return None


def _money(value: Any) -> Money | None:
    try:
        return Money.model_validate(value) if value else None
    except ValueError:
        return None


async def _session_facts(svc: ApiServices, session_id: str) -> SessionFacts | None:
    state: SessionState | None = await svc.presentations.session_state(session_id)
    if state is None:
        return None
    spent = remaining = None
    if state.budget_ledger_id:
        ledger = await svc.spend.ledger_view(state.budget_ledger_id, state.principal_id)
        if ledger is not None:
            spent = Money(
                amount=ledger.committed.amount + ledger.reserved.amount, currency=ledger.committed.currency
            )
            remaining = ledger.remaining
    return SessionFacts(
        session_id=session_id,
        agent_chain=list(state.chain),
        budget=state.grant.budget,
        spent=spent,
        remaining=remaining if remaining is not None else state.grant.budget,
        expires_at=state.grant.expires_at,
    )


async def _cap(
    svc: ApiServices,
    principal_id: str,
    provider: str | None,
    adds: Money | None,
    limit_after: Money | None,
    month: str | None = None,
) -> CapEffect | None:
    from models.limits import SpendSummaryRequest

    summary = await svc.spend.spend_view(
        SpendSummaryRequest(principal_id=principal_id, providers=[provider] if provider else [], month=month)
    )
    rows = [p for p in summary.providers if provider is None or p.provider == provider]
    if not rows:
        return None
    ledger = rows[0].ledger
    cur = ledger.limit.currency
    spent, reserved = ledger.committed.amount, ledger.reserved.amount
    after = spent + reserved + (adds.amount if adds and adds.currency == cur else 0)
    limit = limit_after or ledger.limit
    return CapEffect(
        provider=provider or "all providers",
        month=summary.month,
        limit=ledger.limit,
        spent=ledger.committed,
        reserved=ledger.reserved,
        after=Money(amount=min(after, 100_000_000), currency=cur),
        limit_after=limit_after,
        over_limit=after > limit.amount,
    )


async def approval_facts(svc: ApiServices, approval: ApprovalRequest, email: str) -> ApprovalFacts:
    """Every fact the page shows, read now from the workflow's pending approval and the live state."""
    d = approval.details
    facts = ApprovalFacts(
        approval_id=approval.approval_id,
        kind=approval.kind,
        workflow_id=approval.workflow_id,
        summary=approval.summary,
        requested_at=approval.requested_at,
        expires_at=approval.expires_at,
        principal_email=email,
        details=d,
    )
    if approval.workflow_id.startswith("provision-"):
        await _provision_facts(svc, approval, facts)
    elif approval.workflow_id.startswith("renewal-") and d.get("renewal"):
        # a renewal over its month's cap: the cap of the month it is due in, not of this one
        facts.provider = str(d.get("provider") or "") or None
        facts.service_id = str(d.get("service_id") or "") or None
        facts.due_now = _money(d.get("amount"))
        facts.recurring = facts.due_now
        month = str(d["month"]) if d.get("month") else None
        if facts.provider:
            facts.cap = await _cap(svc, approval.principal_id, facts.provider, facts.due_now, None, month)
    elif approval.kind == "session_open":
        facts.agent_chain = [str(d.get("agent", ""))]
        facts.due_now = _money(d.get("budget"))
        if d.get("session_id"):
            facts.session = await _session_facts(svc, str(d["session_id"]))
    elif approval.kind == "agent_unfreeze":
        facts.agent_chain = [str(d.get("agent", ""))]
    elif approval.kind == "limit_change" and d.get("kind") not in (None, "monthly"):
        pass  # an agent's limit is a layer under the cap: no cap effect to show (the page names it)
    elif approval.kind == "limit_change":
        provider = d.get("provider")
        facts.provider = str(provider) if provider else None
        facts.cap = await _cap(svc, approval.principal_id, facts.provider, None, _money(d.get("limit")))
        if provider is None and facts.cap is not None:
            facts.cap.provider = "every provider without its own limit"
    return facts


async def _provision_facts(svc: ApiServices, approval: ApprovalRequest, facts: ApprovalFacts) -> None:
    d = approval.details
    req = await provision_request(svc, approval.workflow_id)
    owner: RequestOwner | None = await svc.orchestrator.owner(approval.workflow_id)
    if req is not None:
        facts.request_id = req.request_id
        facts.provider = req.provider
        facts.service_id = req.service_id
        facts.name = req.name
        facts.configuration = req.configuration
        facts.credential_ttl_seconds = req.credential_ttl_seconds
        facts.agent_chain = [req.actor.agent]
        try:
            quote = await svc.orchestrator.quote(req.service_id, req.configuration, req.max_price)
        except QuartermasterError:
            quote = None
        if quote is not None:
            facts.service_description = quote.service.description
            facts.plan = quote.service.kind
            facts.due_now = quote.due_now
            facts.recurring = quote.recurring
            facts.interval = quote.interval
            facts.reversible = quote.reversible
            facts.terms_version = quote.terms_version
            facts.tos_url = quote.tos_url
            facts.scopes = req.scopes or list(quote.service.scopes)
            facts.forecast = await quote_forecast(
                svc.temporal, svc.spend, approval.principal_id, quote, list(svc.settings.providers)
            )
    if owner is not None and owner.session_id:
        facts.session = await _session_facts(svc, owner.session_id)
        if facts.session is not None:
            facts.agent_chain = facts.session.agent_chain
    # the workflow's own numbers win over the live catalog: they are what it will charge
    if (amount := _money(d.get("amount"))) is not None:
        facts.due_now = amount
    if d.get("terms_version"):
        facts.terms_version = str(d["terms_version"])
        facts.tos_url = str(d.get("tos_url") or facts.tos_url or "")
    if facts.provider:
        facts.cap = await _cap(svc, approval.principal_id, facts.provider, facts.due_now, None)
