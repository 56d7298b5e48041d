"""Human approval gates inside a workflow.

A gate asks the notifier activity to deliver a one-time code to the principal (never to the agent),
keeps only the code's hash, and waits for a decision whose code matches. Wrong, replayed or late
decisions change nothing and are kept in `attempts` for the audit trail; too many wrong codes close
the approval as denied. A timeout is caught and returned as an outcome, never left to fail the task.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from models.approval import (
        ApprovalDecision,
        ApprovalKind,
        ApprovalNotice,
        ApprovalRequest,
        ApprovalTicket,
        DecisionOutcome,
        code_hash,
    )
    from workflows.search_attributes import QM_AWAITING, QM_STATE, State

MAX_WRONG_CODES = 5
GateStatus = Literal["approved", "denied", "timed_out", "locked_out"]


@dataclass
class GateResult:
    status: GateStatus
    decision: ApprovalDecision | None = None


@dataclass
class RejectedAttempt:
    approval_id: str
    status: str


@dataclass
class _Open:
    request: ApprovalRequest
    code_hash: str
    wrong: int = 0
    decision: ApprovalDecision | None = None
    locked_out: bool = False


@dataclass
class ApprovalGate:
    """Holds the open approvals of one workflow. Call `decide` from signal/update handlers."""

    open: dict[str, _Open] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    attempts: list[RejectedAttempt] = field(default_factory=list)

    def _publish(self) -> None:
        """Pending approvals go to the memo (encrypted), so `qm approvals` lists them without queries."""
        workflow.upsert_memo({"pending_approvals": [r.model_dump(mode="json") for r in self.pending()]})

    def pending(self) -> list[ApprovalRequest]:
        return [o.request for o in self.open.values() if o.decision is None and not o.locked_out]

    def decide(self, d: ApprovalDecision) -> DecisionOutcome:
        """Check the proof and record the decision. Synchronous: atomic inside a handler."""
        entry = self.open.get(d.approval_id)
        status: str
        if entry is None:
            status = "ALREADY_DECIDED" if d.approval_id in self.closed else "UNKNOWN_APPROVAL"
        elif entry.decision is not None:
            status = "ALREADY_DECIDED"
        elif entry.locked_out:
            status = "LOCKED_OUT"
        elif not hmac.compare_digest(entry.code_hash, code_hash(d.approval_id, d.code.reveal())):
            entry.wrong += 1
            entry.locked_out = entry.wrong >= MAX_WRONG_CODES
            status = "LOCKED_OUT" if entry.locked_out else "WRONG_CODE"
        else:
            entry.decision = d
            return DecisionOutcome(status="ACCEPTED", approval_id=d.approval_id)
        self.attempts.append(RejectedAttempt(d.approval_id, status))
        return DecisionOutcome(status=status, approval_id=d.approval_id)

    async def ask(
        self,
        *,
        approval_id: str,
        kind: ApprovalKind,
        principal_id: str,
        principal_email: str,
        summary: str,
        details: dict[str, Any],
        timeout: timedelta,
        satisfied_by: Callable[[], bool] | None = None,
        poll: Callable[[], Awaitable[bool]] | None = None,
        poll_every: timedelta = timedelta(seconds=30),
        on_rejected: Callable[[list[RejectedAttempt]], Awaitable[None]] | None = None,
    ) -> GateResult:
        """Notify the principal and wait for a valid decision, or the timeout.

        `satisfied_by` ends the wait as approved when something else settles it (an OAuth callback, a
        webhook signal); `poll` is awaited every `poll_every` as a fallback for lost signals.
        """
        now = workflow.now()
        request = ApprovalRequest(
            approval_id=approval_id,
            kind=kind,
            workflow_id=workflow.info().workflow_id,
            principal_id=principal_id,
            summary=summary,
            details=details,
            requested_at=now,
            expires_at=now + timeout,
        )
        ticket = await self._notify(request, principal_email, kind)
        entry = _Open(request=request, code_hash=ticket.code_hash)
        self.open[approval_id] = entry
        workflow.upsert_search_attributes(
            [QM_STATE.value_set(State.AWAITING_APPROVAL), QM_AWAITING.value_set(kind)]
        )
        workflow.set_current_details(f"waiting for {kind} approval by the principal: {summary}")
        self._publish()
        deadline = now + timeout
        satisfied = satisfied_by or (lambda: False)
        seen = len(self.attempts)
        try:
            while True:
                remaining = deadline - workflow.now()
                if remaining <= timedelta(0):
                    raise TimeoutError
                try:
                    await workflow.wait_condition(
                        lambda: (
                            entry.decision is not None
                            or entry.locked_out
                            or satisfied()
                            or (on_rejected is not None and len(self.attempts) > seen)  # noqa: B023 - read each wake-up
                        ),
                        timeout=min(remaining, poll_every) if poll else remaining,
                        timeout_summary=f"{kind} approval",
                    )
                    if on_rejected is not None and len(self.attempts) > seen:
                        fresh, seen = self.attempts[seen:], len(self.attempts)
                        await on_rejected(fresh)  # audited from the main coroutine: deterministic
                        if entry.decision is None and not entry.locked_out and not satisfied():
                            continue
                    break
                except TimeoutError:
                    if poll is None or workflow.now() >= deadline:
                        raise
                    if await poll():
                        break
            if entry.locked_out:
                result = GateResult("locked_out")
            elif entry.decision is not None:
                result = GateResult(
                    "approved" if entry.decision.decision == "approve" else "denied", entry.decision
                )
            else:
                result = GateResult("approved")
        except TimeoutError:
            result = GateResult("timed_out")
        except Exception:  # not `finally`: an evicted workflow (GeneratorExit) must not touch the runtime
            self._close(approval_id)
            raise
        self._close(approval_id)
        return result

    @staticmethod
    async def _notify(request: ApprovalRequest, principal_email: str, kind: str) -> ApprovalTicket:
        ticket: ApprovalTicket = await workflow.execute_activity(
            "notify_approval",
            ApprovalNotice(request=request, principal_email=principal_email),
            result_type=ApprovalTicket,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            summary=f"notify principal: {kind} approval",
        )
        return ticket

    def _close(self, approval_id: str) -> None:
        self.open.pop(approval_id, None)
        self.closed.add(approval_id)
        self._publish()
        workflow.upsert_search_attributes([QM_STATE.value_set(State.RUNNING), QM_AWAITING.value_unset()])
        workflow.set_current_details("")
