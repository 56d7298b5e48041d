"""`AgentWorkflow`: one entity per principal and agent name (`agent-<principal id>-<name>`): the kill switch.

Sessions register here when they become active. `freeze` (a principal's emergency stop) takes effect
inside the update handler before any await, so every enforcement point that queries this entity
refuses at once; then every registered session (and any running session a visibility search finds)
is revoked, which revokes the provider credentials minted under them and cascades to their
descendants. A frozen agent's new sessions are revoked as they register. Unfreezing restores power,
so it is a human action: an `agent_unfreeze` approval whose code goes to the principal, asked only
with the API's authority proof (which binds the principal id to the email the code goes to, so a
Temporal client without the server-side key cannot have the code sent to itself). Freezing needs no
proof: it only takes authority away.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models.approval import ApprovalDecision, ApprovalRequest, DecisionOutcome
    from models.audit import AuditAction, AuditEvent
    from models.authority import ProofKind, change_of
    from models.session import (
        AgentFreezeRequest,
        AgentSessionRef,
        AgentStatus,
        AgentUnfreezeRequest,
        FreezeResult,
        RevokeRequest,
        RevokeSessions,
        RevokeSessionsResult,
    )
    from workflows import authority
    from workflows.approval_gate import ApprovalGate
    from workflows.search_attributes import QM_AGENT, QM_STATE

#: sessions remembered per agent (closed ones are dropped when they report back)
MAX_TRACKED_SESSIONS = 2000
CONTINUE_AS_NEW_AFTER_EVENTS = 5000


@workflow.defn(name="AgentWorkflow")
class AgentWorkflow:
    @workflow.init
    def __init__(self, start: AgentStatus) -> None:
        self.status = start.model_copy(deep=True)
        self.gate = ApprovalGate()
        self._unfreeze: AgentUnfreezeRequest | None = None
        self._round = 0
        self._pending_audits: list[asyncio.Task[None]] = []

    @property
    def _approval_id(self) -> str:
        return f"{workflow.info().workflow_id}.agent_unfreeze"

    @workflow.query(name="status")
    def query_status(self) -> AgentStatus:
        return self.status

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[ApprovalRequest]:
        return self.gate.pending()

    @workflow.update(name="submit_decision")
    def submit_decision(self, decision: ApprovalDecision) -> DecisionOutcome:
        return self.gate.decide(decision)

    @workflow.signal(name="decide")
    def decide(self, decision: ApprovalDecision) -> None:
        self.gate.decide(decision)

    @workflow.signal(name="register_session")
    async def register_session(self, ref: AgentSessionRef) -> None:
        if ref.session_id not in self.status.sessions:
            self.status.sessions.append(ref.session_id)
            del self.status.sessions[:-MAX_TRACKED_SESSIONS]
        if self.status.frozen:
            await self._revoke([ref.session_id], self.status.frozen_by)

    @workflow.signal(name="session_closed")
    def session_closed(self, ref: AgentSessionRef) -> None:
        if ref.session_id in self.status.sessions:
            self.status.sessions.remove(ref.session_id)

    @workflow.update(name="freeze")
    async def freeze(self, req: AgentFreezeRequest) -> FreezeResult:
        """Block the agent now, then revoke everything it holds; returns when the sessions are closed."""
        s = self.status
        s.frozen = True
        s.frozen_by = req.principal_id
        s.frozen_at = workflow.now()
        s.reason = req.reason
        self._unfreeze = None  # a pending unfreeze is void once frozen again
        workflow.upsert_search_attributes([QM_AGENT.value_set(s.agent), QM_STATE.value_set("FROZEN")])
        self._round += 1
        self._audit("agent.frozen", f"frozen-{self._round}", req.principal_id, req.reason)
        closed = await self._revoke(list(s.sessions), req.principal_id, search=True)
        return FreezeResult(agent=s.agent, frozen=True, sessions_revoked=closed)

    @workflow.update(name="unfreeze")
    def unfreeze(self, req: AgentUnfreezeRequest) -> AgentStatus:
        """Ask the principal to approve the unfreeze (one-time code to the principal)."""
        self._unfreeze = req
        self.status.unfreeze_approval_id = self._approval_id
        return self.status

    @unfreeze.validator
    def _validate_unfreeze(self, req: AgentUnfreezeRequest) -> None:
        wid = workflow.info().workflow_id
        if not wid.startswith(f"agent-{req.principal_id}-") or not authority.verify(
            req.proof, kind=ProofKind.AGENT_UNFREEZE, target=wid, change=change_of(req)
        ):
            raise ValueError("AUTHORITY_INVALID: an unfreeze needs the API's proof for this principal")
        if not self.status.frozen:
            raise ValueError("the agent is not frozen")

    async def _revoke(self, session_ids: list[str], by: str | None, *, search: bool = False) -> list[str]:
        try:
            result = await workflow.execute_activity(
                "revoke_sessions",
                RevokeSessions(
                    session_ids=session_ids,
                    request=RevokeRequest(reason="agent frozen", by=by),
                    agent=self.status.agent if search else None,
                    principal_id=workflow.info().workflow_id.removeprefix("agent-").split("-", 1)[0]
                    if search
                    else None,
                ),
                result_type=RevokeSessionsResult,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
                summary=f"revoke the sessions of {self.status.agent}",
            )
        except ActivityError:
            workflow.logger.warning("could not revoke every session of a frozen agent")
            return []
        return [c.session_id for c in result.closed]

    def _audit(self, action: AuditAction, step: str, principal_id: str | None, reason: str | None) -> None:
        event = AuditEvent(
            event_id=f"{workflow.info().workflow_id}:{step}",
            time=workflow.now(),
            action=action,
            reason=reason,
            principal_id=principal_id,
            agent_chain=[self.status.agent],
            workflow_id=workflow.info().workflow_id,
        )

        async def send() -> None:
            try:
                await workflow.execute_activity(
                    "record_audit",
                    event,
                    schedule_to_close_timeout=timedelta(minutes=10),
                    summary=f"audit {action}",
                )
            except ActivityError:
                workflow.logger.warning("audit event not recorded")

        self._pending_audits.append(asyncio.create_task(send()))

    async def _run_unfreeze(self, req: AgentUnfreezeRequest) -> None:
        self.gate.closed.discard(self._approval_id)  # each unfreeze gets a fresh code
        result = await self.gate.ask(
            approval_id=self._approval_id,
            kind="agent_unfreeze",
            principal_id=req.principal_id,
            principal_email=str(req.principal_email),
            summary=f"unfreeze agent {self.status.agent}",
            details={"agent": self.status.agent, "reason": req.reason},
            timeout=timedelta(hours=24),
        )
        self.status.unfreeze_approval_id = None
        if result.status == "approved" and self._unfreeze is req and self.status.frozen:
            self.status.frozen = False
            self.status.frozen_by = None
            self.status.frozen_at = None
            self.status.reason = None
            self._round += 1
            self._audit("agent.unfrozen", f"unfrozen-{self._round}", req.principal_id, req.reason)
            workflow.upsert_search_attributes([QM_STATE.value_set("ACTIVE")])
        if self._unfreeze is req:
            self._unfreeze = None

    @workflow.run
    async def run(self, start: AgentStatus) -> None:
        workflow.upsert_search_attributes(
            [
                QM_AGENT.value_set(self.status.agent),
                QM_STATE.value_set("FROZEN" if self.status.frozen else "ACTIVE"),
            ]
        )
        while True:
            await workflow.wait_condition(
                lambda: (
                    self._unfreeze is not None
                    or workflow.info().get_current_history_length() > CONTINUE_AS_NEW_AFTER_EVENTS
                    or workflow.info().is_continue_as_new_suggested()
                )
            )
            if self._unfreeze is not None:
                await self._run_unfreeze(self._unfreeze)
                continue
            await workflow.wait_condition(workflow.all_handlers_finished)
            await asyncio.gather(*self._pending_audits)
            workflow.continue_as_new(self.status)
