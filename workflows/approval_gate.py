"""Human approval gates inside a workflow.

A gate asks the notifier activity to deliver a one-time code to the principal (never to the agent),
keeps only the code's keyed hash (HMAC with a server-side authority key: history alone allows no
offline guess), and waits for a decision whose code matches, checked with the keys the worker
installed (`workflows.authority`). A decision counts only with the API's proof, which names the
authenticated caller: wrong codes are counted per caller (so nobody can lock a human out of their own
approval), an empty or unproven one is never a try, and every answer says how many tries are left.
Only a flood of wrong codes from many callers closes the approval. Wrong, replayed or late decisions
change nothing and are kept in `attempts` for the audit trail. A timeout is caught and returned as an
outcome, never left to fail the task. Histories from before keyed hashes (`ticket.kid` None) keep
their old rules, so they replay unchanged.

The human's list of pending approvals is a read model in the store: the notice activity writes the
row, and the `close_approval` activity closes it when the gate closes (patch `approvals-read-model`;
older histories published the list in the memo instead, which is kept for them). A workflow that sets
`close_in_background` lets that activity run beside its next step and awaits `settled()` before it
returns (the provisioning workflow, patch `approval-close-in-background`).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models.approval import (
        ApprovalClosed,
        ApprovalDecision,
        ApprovalKind,
        ApprovalNotice,
        ApprovalRequest,
        ApprovalTicket,
        DecisionOutcome,
        DecisionStatus,
        legacy_code_hash,
    )
    from models.authority import ProofKind, change_of
    from workflows import authority
    from workflows.search_attributes import QM_AWAITING, QM_STATE, State

#: wrong codes one caller may send for one approval (older histories: all callers together)
MAX_WRONG_CODES = 5
#: wrong codes from all callers together before the approval closes (a brute-force bound)
MAX_WRONG_TOTAL = 25
GateStatus = Literal["approved", "denied", "timed_out", "locked_out"]
#: the read model replaces the memo (docs/performance.md): one activity when a gate closes
READ_MODEL_PATCH = "approvals-read-model"


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
    ticket: ApprovalTicket
    wrong: int = 0
    wrong_by: dict[str, int] = field(default_factory=dict)
    decision: ApprovalDecision | None = None
    locked_out: bool = False


def _proven(d: ApprovalDecision) -> bool:
    """Did the API send this decision (and name its caller)?"""
    change = change_of(d, exclude=frozenset({"code"}))
    return d.caller is not None and authority.verify(
        d.proof, kind=ProofKind.APPROVAL_DECISION, target=d.approval_id, change=change
    )


@dataclass
class ApprovalGate:
    """Holds the open approvals of one workflow. Call `decide` from signal/update handlers."""

    open: dict[str, _Open] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    attempts: list[RejectedAttempt] = field(default_factory=list)
    #: decided once per workflow at the first gate: store read model (True) or memo (old histories)
    read_model: bool | None = None
    #: close the read-model row without waiting for it (the workflow awaits `settled()` at its end)
    close_in_background: bool = False
    closing: list[workflow.ActivityHandle[Any]] = field(default_factory=list)

    def _publish(self) -> None:
        """Older histories: pending approvals went to the memo (encrypted) for `qm approvals`."""
        if self.read_model is None:
            self.read_model = workflow.patched(READ_MODEL_PATCH)
        if self.read_model:
            return  # the notice activity wrote the row; `_closed` closes it
        workflow.upsert_memo({"pending_approvals": [r.model_dump(mode="json") for r in self.pending()]})

    def pending(self) -> list[ApprovalRequest]:
        return [o.request for o in self.open.values() if o.decision is None and not o.locked_out]

    def decide(self, d: ApprovalDecision) -> DecisionOutcome:
        """Check the proof and the code and record the decision. Synchronous: atomic in a handler."""
        entry = self.open.get(d.approval_id)
        status: DecisionStatus
        tries_left: int | None = None
        if entry is None:
            status = "ALREADY_DECIDED" if d.approval_id in self.closed else "UNKNOWN_APPROVAL"
        elif entry.decision is not None:
            status = "ALREADY_DECIDED"
        elif entry.locked_out:
            status = "LOCKED_OUT"
        elif entry.ticket.kid is None:
            status = self._decide_legacy(entry, d)
        else:
            status, tries_left = self._decide_keyed(entry, entry.ticket.kid, d)
        if status == "ACCEPTED":
            return DecisionOutcome(status=status, approval_id=d.approval_id)
        self.attempts.append(RejectedAttempt(d.approval_id, status))
        return DecisionOutcome(status=status, approval_id=d.approval_id, tries_left=tries_left)

    @staticmethod
    def _decide_keyed(entry: _Open, kid: str, d: ApprovalDecision) -> tuple[DecisionStatus, int | None]:
        if not _proven(d):
            return "UNAUTHENTICATED", None  # not from the API: not a try of anyone's
        code = d.code.reveal()
        caller = d.caller or ""
        wrong = entry.wrong_by.get(caller, 0)
        if not code.strip():
            return "CODE_REQUIRED", MAX_WRONG_CODES - wrong
        if wrong >= MAX_WRONG_CODES:
            return "LOCKED_OUT", 0  # this caller only; the approval stays open for the others
        if authority.code_matches(kid, d.approval_id, code, entry.ticket.code_hash):
            entry.decision = d
            return "ACCEPTED", None
        entry.wrong_by[caller] = wrong + 1
        entry.wrong += 1
        entry.locked_out = entry.wrong >= MAX_WRONG_TOTAL
        left = MAX_WRONG_CODES - wrong - 1
        return ("LOCKED_OUT" if entry.locked_out or left == 0 else "WRONG_CODE"), left

    @staticmethod
    def _decide_legacy(entry: _Open, d: ApprovalDecision) -> DecisionStatus:
        """The rules of histories recorded before keyed hashes (unkeyed sha256, one shared count)."""
        if not hmac.compare_digest(entry.ticket.code_hash, legacy_code_hash(d.approval_id, d.code.reveal())):
            entry.wrong += 1
            entry.locked_out = entry.wrong >= MAX_WRONG_CODES
            return "LOCKED_OUT" if entry.locked_out else "WRONG_CODE"
        entry.decision = d
        return "ACCEPTED"

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
        poll_backoff: float = 1.0,
        poll_max_every: timedelta | None = None,
        on_rejected: Callable[[list[RejectedAttempt]], Awaitable[None]] | None = None,
    ) -> GateResult:
        """Notify the principal and wait for a valid decision, or the timeout.

        `satisfied_by` ends the wait as approved when something else settles it (an OAuth callback, a
        webhook signal); `poll` is awaited every `poll_every` as a fallback for lost signals, the
        interval multiplied by `poll_backoff` after each poll up to `poll_max_every`, so a long wait
        polls a bounded number of times (its history stays small without continue-as-new).
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
        entry = _Open(request=request, ticket=ticket)
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
                    if poll_backoff > 1.0:
                        grown = poll_every * poll_backoff
                        poll_every = min(grown, poll_max_every) if poll_max_every else grown
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
            await self._closed(approval_id, kind)
            raise
        self._close(approval_id)
        await self._closed(approval_id, kind)
        return result

    async def _closed(self, approval_id: str, kind: str) -> None:
        """The approval leaves the human's list (the store's read model)."""
        if not self.read_model:
            return
        handle = workflow.start_activity(
            "close_approval",
            ApprovalClosed(approval_id=approval_id),
            start_to_close_timeout=timedelta(seconds=30),
            schedule_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            summary=f"close the {kind} approval in the human's list",
        )
        self.closing.append(handle)
        if not self.close_in_background:
            await self.settled()

    async def settled(self) -> None:
        """Wait for every `close_approval` started; a failed one is let go (a read model must not hold
        the request up; its row drops out of the list at its expiry)."""
        while self.closing:
            try:
                await self.closing.pop(0)
            except ActivityError:
                pass

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
