"""Spending limits: the per-principal limits entity and the human-approved limit change.

`PrincipalLimitsWorkflow` (`limits-<principal id>`) holds the global and per-provider monthly limits,
and the agent layers under them (per agent: a monthly limit, a per-purchase maximum, purchases per
hour; or the default for every agent).
It only changes through `set_limit`, which the `set_spend_limit` activity sends after a human approved
(a `limit_change` approval here, or a `spend_limit` approval with "raise the limit" in provisioning).

`LimitChangeWorkflow` (`limit-change-<principal id>-<change id>`, started by the API) asks the
principal through `ApprovalGate`: a one-time code goes to the principal's channel, and only a
decision carrying that code applies the change. Its approval id is `<workflow id>.limit_change`.

Authority proofs (`workflows.authority`): `set_limit` needs the worker's proof, a limit change's start
the API's (it binds the principal id to the email the code goes to), and only this workflow's own
continue-as-new may carry limits in its start.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import email_validator  # noqa: F401  (pydantic's EmailStr imports it lazily, inside the sandbox)

    from models.approval import ApprovalDecision, ApprovalRequest, DecisionOutcome
    from models.audit import AuditEvent
    from models.authority import ProofKind, change_of
    from models.limits import (
        AgentLimits,
        LimitChange,
        LimitChangeRequest,
        LimitChangeResult,
        LimitsStart,
        PrincipalLimits,
    )
    from workflows import authority
    from workflows.approval_gate import ApprovalGate

_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=60))
#: changes are rare; this keeps the dedup list (carried across continue-as-new) small
_KEEP_CHANGE_IDS = 500


async def _audit(event: AuditEvent) -> None:
    await workflow.execute_activity(
        "record_audit",
        event,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=_RETRY,
        summary=f"audit {event.action}",
    )


@workflow.defn(name="PrincipalLimits")
class PrincipalLimitsWorkflow:
    @workflow.init
    def __init__(self, start: LimitsStart) -> None:
        # limits in the start are only ever carried by this workflow's own continue-as-new
        carried = start.state if authority.from_own_continue_as_new() else None
        self._limits = carried or PrincipalLimits(principal_id=start.principal_id)
        self._to_audit: list[LimitChange] = []

    @workflow.update(name="set_limit")
    def set_limit(self, change: LimitChange) -> PrincipalLimits:
        """Apply a change once (by change id); the version goes up with every applied change."""
        if change.change_id in self._limits.applied_change_ids:
            return self._limits
        per_provider = dict(self._limits.per_provider)
        global_limit = self._limits.global_limit
        agent_default, per_agent = self._limits.agent_default, dict(self._limits.per_agent)
        if change.kind == "monthly":
            if change.provider is None:
                global_limit = change.limit
            else:
                assert change.limit is not None  # the model's validator
                per_provider[change.provider] = change.limit
        else:
            field = {"agent_monthly": "monthly", "per_transaction": "per_transaction"}.get(
                change.kind, "purchases_per_hour"
            )
            value = change.purchases_per_hour if change.kind == "velocity" else change.limit
            if change.agent is None:
                agent_default = agent_default.model_copy(update={field: value})
            else:
                own = per_agent.get(change.agent, AgentLimits())
                per_agent[change.agent] = own.model_copy(update={field: value})
        self._limits = self._limits.model_copy(
            update={
                "global_limit": global_limit,
                "per_provider": per_provider,
                "agent_default": agent_default,
                "per_agent": per_agent,
                "version": self._limits.version + 1,
                "applied_change_ids": [*self._limits.applied_change_ids, change.change_id][
                    -_KEEP_CHANGE_IDS:
                ],
            }
        )
        self._to_audit.append(change)
        return self._limits

    @set_limit.validator
    def _validate(self, change: LimitChange) -> None:
        if change.principal_id != self._limits.principal_id:
            message = "limit change for another principal"
            raise ApplicationError(message, type="INVALID_REQUEST", non_retryable=True)
        wid = workflow.info().workflow_id
        if not authority.verify(
            change.proof, kind=ProofKind.LIMITS_SET, target=wid, change=change_of(change)
        ):
            message = "AUTHORITY_INVALID: a limit change without the worker's proof"
            raise ApplicationError(message, type="AUTHORITY_INVALID", non_retryable=True)

    @workflow.update(name="get")
    def get(self) -> PrincipalLimits:
        """Read through update-with-start (works before the entity exists)."""
        return self._limits

    @workflow.query(name="limits")
    def limits(self) -> PrincipalLimits:
        return self._limits

    def _audit_details(self, change: LimitChange) -> dict[str, object]:
        details: dict[str, object] = {
            "scope": change.provider or "global",
            "version": self._limits.version,
        }
        if change.kind != "monthly":  # older events keep their exact shape
            details |= {"scope": change.agent or "every agent", "kind": change.kind}
            if change.purchases_per_hour is not None:
                details["purchases_per_hour"] = change.purchases_per_hour
        return details

    @workflow.run
    async def run(self, start: LimitsStart) -> PrincipalLimits:
        workflow.set_current_details("spending limits of one principal")
        while True:
            await workflow.wait_condition(
                lambda: bool(self._to_audit) or workflow.info().is_continue_as_new_suggested()
            )
            while self._to_audit:
                change = self._to_audit[0]
                await _audit(
                    AuditEvent(
                        event_id=f"{workflow.info().workflow_id}:{change.change_id}",
                        time=change.changed_at,
                        action="limit.changed",
                        principal_id=change.principal_id,
                        workflow_id=workflow.info().workflow_id,
                        provider=change.provider,
                        amount=change.limit,
                        approved_by=change.approval_id,
                        details=self._audit_details(change),
                    )
                )
                self._to_audit.pop(0)
            info = workflow.info()
            if info.is_continue_as_new_suggested() or info.get_current_history_length() > 5000:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(LimitsStart(principal_id=start.principal_id, state=self._limits))


@workflow.defn(name="LimitChange")
class LimitChangeWorkflow:
    def __init__(self) -> None:
        self._gate = ApprovalGate()

    @workflow.run
    async def run(self, req: LimitChangeRequest) -> LimitChangeResult:
        wf_id = workflow.info().workflow_id
        if authority.required() and not authority.verify(
            req.proof,
            kind=ProofKind.LIMIT_CHANGE_REQUEST,
            target=wf_id,
            change=change_of(req),
            issued_near=workflow.info().workflow_start_time,
        ):
            await _audit(
                AuditEvent(
                    event_id=f"{wf_id}:limit:forged",
                    time=workflow.now(),
                    action="authority.refused",
                    outcome="refused",
                    reason="AUTHORITY_INVALID",
                    principal_id=req.principal_id,
                    workflow_id=wf_id,
                    provider=req.provider,
                    amount=req.limit,
                )
            )
            return LimitChangeResult(status="refused")
        result = await self._gate.ask(
            approval_id=f"{wf_id}.limit_change",
            kind="limit_change",
            principal_id=req.principal_id,
            principal_email=str(req.principal_email),
            summary=f"set {req.scope()} to {req.value()}",
            details=self._details(req),
            timeout=timedelta(seconds=req.approval_timeout_seconds),
        )
        if result.status != "approved":
            await _audit(
                AuditEvent(
                    event_id=f"{wf_id}:limit:{result.status}",
                    time=workflow.now(),
                    action="limit.changed",
                    outcome="refused",
                    reason=result.status,
                    principal_id=req.principal_id,
                    workflow_id=wf_id,
                    provider=req.provider,
                    amount=req.limit,
                )
            )
            return LimitChangeResult(status=result.status)
        limits = await workflow.execute_activity(
            "set_spend_limit",
            LimitChange(
                change_id=wf_id,
                principal_id=req.principal_id,
                provider=req.provider,
                limit=req.limit,
                kind=req.kind,
                agent=req.agent,
                purchases_per_hour=req.purchases_per_hour,
                approval_id=f"{wf_id}.limit_change",
                changed_at=workflow.now(),
            ),
            result_type=PrincipalLimits,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_RETRY,
            summary=f"apply limit {req.value()} ({self._short_scope(req)})",
        )
        return LimitChangeResult(status="applied", limits=limits)

    @staticmethod
    def _short_scope(req: LimitChangeRequest) -> str:
        if req.kind != "monthly":
            return f"{req.kind}, {req.agent or 'every agent'}"
        return f"provider {req.provider}" if req.provider else "every provider (global)"

    @staticmethod
    def _details(req: LimitChangeRequest) -> dict[str, object]:
        """What the approval shows; a monthly cap's keep their recorded shape."""
        details: dict[str, object] = {
            "provider": req.provider,
            "limit": req.limit.model_dump() if req.limit else None,
        }
        if req.kind != "monthly":
            details |= {"kind": req.kind, "agent": req.agent, "purchases_per_hour": req.purchases_per_hour}
        return details

    @workflow.update(name="submit_decision")
    def submit_decision(self, decision: ApprovalDecision) -> DecisionOutcome:
        return self._gate.decide(decision)

    @workflow.signal(name="decide")
    def decide(self, decision: ApprovalDecision) -> None:
        self._gate.decide(decision)

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[ApprovalRequest]:
        return self._gate.pending()
