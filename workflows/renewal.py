"""`RenewalWorkflow`: one per paid recurring resource, one run per period (continue-as-new).

Each period: wait until `notice` before the due date; tell the principal; reserve the price in the due
date's monthly ledger (and the purchase's budget layers still open), asking the human (`spend_limit`)
before the due date when it does not fit; at the due date charge through a fresh Shared Payment Token
for exactly the price, commit, revoke the token. A declined card is retried on the policy's schedule
and the human told each time; unpaid at the end of the grace period the resource is suspended:
removed at the provider when it can be, otherwise left to lapse with no further renewals
(docs/billing.md). A `cancel` signal (the resource was removed) ends it and releases any hold.

Every key comes from the workflow id and the period: `<wid>:p<n>` is the ledgers' purchase id,
`<wid>:p<n>:token` the token's and `<wid>:p<n>:charge` the provider's charge key.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payment import RevokeTokenInput
    from activities.resources import RemoveInput
    from models.approval import ApprovalDecision, DecisionOutcome
    from models.authority import ProofKind, change_of
    from models.errors import ErrorCode
    from models.ledger import (
        OVERRIDABLE_KINDS,
        CommitLayers,
        LayeredReserveOutcome,
        LedgerLayer,
        ReleaseLayers,
        ReserveLayers,
        agent_layers,
        month_of,
        monthly_ledger_id,
    )
    from models.money import Money
    from models.payment import PaymentMethodStatus
    from models.plan_change import PlanChanged
    from models.provider import Charge, Resource
    from models.provisioning import IssuedToken, PaymentTokenInput
    from models.renewal import (
        HISTORY_KEPT,
        CancelRenewal,
        OpenLayers,
        RenewalCharge,
        RenewalNotice,
        RenewalStart,
        RenewalState,
        RenewalStatus,
        RenewalView,
        RenewInput,
        due_at,
        unsigned_fields,
    )
    from workflows import authority
    from workflows.approval_gate import ApprovalGate
    from workflows.audit_trail import AuditTrail

CALL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=15),
    "schedule_to_close_timeout": timedelta(minutes=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}
#: settling money and telling the human must finish: no overall deadline
UNTIL_DONE: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)),
}
TOKEN_LIFETIME = timedelta(hours=1)


class _Unpaid(Exception):
    """This attempt did not charge (declined card, no card, token refused)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@workflow.defn(name="RenewalWorkflow")
class RenewalWorkflow:
    @workflow.init
    def __init__(self, start: RenewalStart) -> None:
        first = not authority.from_own_continue_as_new()
        #: a first run started without the worker's proof fails before it reserves or charges anything
        self.forged = (
            first
            and authority.required()
            and not authority.verify(
                start.proof,
                kind=ProofKind.RENEWAL_START,
                target=workflow.info().workflow_id,
                change=change_of(start, exclude=unsigned_fields(start)),
                issued_near=workflow.info().workflow_start_time,
            )
        )
        if first:  # state is only ever carried by this workflow's own continue-as-new
            start = start.model_copy(update={"state": RenewalState()})
        self.start = start
        self.s = start.state
        self.gate = ApprovalGate()
        self.cancelled: str | None = None
        self.status: RenewalStatus = "scheduled"
        self.wid = workflow.info().workflow_id
        self.layers: list[LedgerLayer] = []
        self.held = False
        #: the stable code when an agent's limit refused this period's renewal (no approval can lift it)
        self.refused: str | None = None
        self.ignored_signals = 0

    # -- handlers ---------------------------------------------------------------------------------
    @workflow.update(name="submit_decision")
    def submit_decision(self, decision: ApprovalDecision) -> DecisionOutcome:
        return self.gate.decide(decision)

    @workflow.signal(name="decide")
    def decide(self, decision: ApprovalDecision) -> None:
        self.gate.decide(decision)

    @workflow.signal(name="plan_changed")
    def plan_changed(self, change: PlanChanged) -> None:
        """Renew as the new service at its price from the next period on, less the credit. Only with
        the worker's proof (a plan change workflow's activity): anything else changes nothing."""
        if not authority.verify(
            change.proof, kind=ProofKind.RENEWAL_PLAN_CHANGED, target=self.wid, change=change_of(change)
        ):
            self.ignored_signals += 1
            return
        self.start = self.start.model_copy(update={"service_id": change.service_id, "price": change.price})
        self.s.credit += change.credit.amount

    @workflow.signal(name="cancel")
    def cancel(self, req: CancelRenewal) -> None:
        self.cancelled = self.cancelled or req.reason

    @workflow.query(name="view")
    def view(self) -> RenewalView:
        st = self.start
        ended = self.status in ("suspended", "cancelled", "declined")
        return RenewalView(
            resource_id=st.resource_id,
            provider=st.provider,
            service_id=st.service_id,
            principal_id=st.principal_id,
            price=st.price,
            interval=st.interval,
            status=self.status,
            period=self.s.period,
            next_due=None if ended else self._due(),
            charges=list(self.s.charges),
            declines=self.s.declines,
            anchor=st.anchor,
            held=self.held,
            customer_id=st.customer_id,
            credit=self.s.credit,
            refused=self.refused,
        )

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[dict[str, Any]]:
        return [r.model_dump(mode="json") for r in self.gate.pending()]

    # -- main -------------------------------------------------------------------------------------
    def _amount(self) -> Money:
        """This period's charge: the price less any credit from a downgrade."""
        price = self.start.price
        return Money(amount=max(price.amount - self.s.credit, 0), currency=price.currency)

    def _due(self) -> datetime:
        return due_at(self.start.anchor, self.start.interval, self.s.period)

    async def _sleep_until(self, when: datetime, what: str) -> bool:
        """Wait until `when` or a cancel; True when cancelled."""
        delay = when - workflow.now()
        if delay > timedelta(0):
            workflow.set_current_details(what)
            try:
                await workflow.wait_condition(
                    lambda: self.cancelled is not None, timeout=delay, timeout_summary=what
                )
            except TimeoutError:
                pass
        return self.cancelled is not None

    @workflow.run
    async def run(self, start: RenewalStart) -> RenewalView:
        if self.forged:
            raise ApplicationError(
                f"AUTHORITY_INVALID: renewal {self.wid} started without the worker's proof",
                type="AUTHORITY_INVALID",
                non_retryable=True,
            )
        self.trail = AuditTrail(
            workflow_id=self.wid,
            principal_id=start.principal_id,
            provider=start.provider,
            service_id=start.service_id,
            resource_id=start.resource_id,
        )
        due = self._due()
        n = self.s.period
        policy = start.policy
        notice_at = due - timedelta(seconds=policy.notice_seconds)
        if await self._sleep_until(notice_at, f"next renewal notice at {notice_at.isoformat()}"):
            return await self._end_cancelled()
        await self._notice(
            "renewal_upcoming",
            due,
            f"{self.start.service_id} {start.resource_id} renews on {due.date().isoformat()} "
            f"for {self._amount()}",
        )
        if self._amount().amount == 0:  # a downgrade's credit covers the whole period
            if await self._sleep_until(due, f"renewal {n} due at {due.isoformat()} (covered by a credit)"):
                return await self._end_cancelled()
            self.s.credit -= self.start.price.amount
            self.s.charges.append(
                RenewalCharge(
                    period=n, due=due, month=month_of(due), amount=self._amount(), payment_reference="credit"
                )
            )
            self.s.period += 1
            await self.trail.flush()
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(self.start.model_copy(update={"state": self.s}))
        if not await self._reserve(due):
            self.status = "declined"
            why = "not approved" if self.refused is None else f"refused by an agent's limit ({self.refused})"
            await self._notice(
                "renewal_suspended", due, f"renewal of {start.resource_id} {why}: it will not renew"
            )
            if await self._sleep_until(due, "renewal declined: waiting for the due date"):
                return await self._end_cancelled()
            await self._suspend(
                due,
                "renewal over the limit was not approved"
                if self.refused is None
                else f"renewal refused by an agent's limit ({self.refused})",
            )
            return await self._finish()
        if await self._sleep_until(due, f"renewal {n} due at {due.isoformat()}"):
            return await self._end_cancelled()
        attempts = [due] + [due + timedelta(seconds=d) for d in policy.retry_after_seconds]
        grace_end = due + timedelta(seconds=policy.grace_seconds)
        for i, when in enumerate(attempts):
            if i and await self._sleep_until(when, f"retry {i} of renewal {n}"):
                return await self._end_cancelled()
            try:
                charge = await self._charge(due, attempt=i)
            except _Unpaid as unpaid:
                self.status = "past_due"
                self.s.declines += 1
                nxt = attempts[i + 1] if i + 1 < len(attempts) else grace_end
                await self.trail.record(
                    "renewal.declined", outcome="failure", reason=unpaid.code, amount=self._amount()
                )
                await self._notice(
                    "renewal_declined",
                    due,
                    f"the renewal of {start.resource_id} for "
                    f"{self._amount()} was declined ({unpaid.code}); next try "
                    f"{nxt.isoformat()}",
                    next_attempt=nxt,
                    suffix=f"-{i}",
                )
                continue
            await self._paid(due, charge)
            await self.trail.flush()
            await workflow.wait_condition(workflow.all_handlers_finished)
            self.s.period += 1
            self.s.charges = self.s.charges[-(HISTORY_KEPT - 1) :] if HISTORY_KEPT > 1 else []
            self.s.charges.append(
                RenewalCharge(
                    period=n,
                    due=due,
                    month=month_of(due),
                    amount=charge.amount,
                    payment_reference=charge.payment_reference,
                )
            )
            workflow.continue_as_new(self.start.model_copy(update={"state": self.s}))
        if await self._sleep_until(grace_end, "past due: waiting for the end of the grace period"):
            return await self._end_cancelled()
        await self._suspend(due, "unpaid after the grace period")
        return await self._finish()

    async def _finish(self) -> RenewalView:
        await self.trail.flush()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.view()

    async def _end_cancelled(self) -> RenewalView:
        self.status = "cancelled"
        await self._release()
        await self.trail.record("renewal.cancelled", reason=self.cancelled)
        return await self._finish()

    # -- steps ------------------------------------------------------------------------------------
    async def _notice(
        self, kind: Any, due: datetime, summary: str, next_attempt: datetime | None = None, suffix: str = ""
    ) -> None:
        st = self.start
        await workflow.execute_activity(
            "renewal_notice",
            RenewalNotice(
                principal_id=st.principal_id,
                principal_email=st.principal_email,
                kind=kind,
                notice_id=f"{self.wid}:p{self.s.period}:{kind}{suffix}",
                resource_id=st.resource_id,
                service_id=st.service_id,
                amount=st.price,
                due=due,
                next_attempt=next_attempt,
                summary=summary,
            ),
            summary=f"tell the principal: {kind}",
            **UNTIL_DONE,
        )

    async def _reserve(self, due: datetime) -> bool:
        """Reserve the price in the due month's ledger, the open budget layers and the buying agents'
        months; ask the human when the cap or a budget has no room. False when the human denied it or
        did not answer before the due date, or an agent's limit refused it (`self.refused`: a one-time
        approval never lifts an agent's limit, so the human is told, not asked)."""
        st = self.start
        opened: OpenLayers = await workflow.execute_activity(
            "open_layers",
            OpenLayers(layers=st.budget_layers),
            result_type=OpenLayers,
            summary="budget layers still open",
            **CALL,
        )
        monthly = LedgerLayer(
            ledger_id=monthly_ledger_id(st.principal_id, st.provider, due),
            limit=Money(amount=10_000, currency=st.price.currency),  # the ledger reads the real limit
            kind="monthly",
        )
        self.layers = [monthly, *opened.layers]
        # the buying agents' months of the due date (and their per-purchase maxima, which
        # `reserve_spend` checks for every agent layer); no velocity layer: a renewal is no new purchase
        if st.agent_chain and workflow.patched("qm-renewal-agent-layers"):
            for agent in dict.fromkeys(st.agent_chain):
                self.layers += agent_layers(
                    st.principal_id, agent, due, st.price.currency, new_purchase=False
                )
        purchase_id = f"{self.wid}:p{self.s.period}"
        hold = int((due - workflow.now()).total_seconds()) + st.policy.grace_seconds + 3600
        override: str | None = None
        while True:
            out: LayeredReserveOutcome = await workflow.execute_activity(
                "reserve_spend",
                ReserveLayers(
                    purchase_id=purchase_id,
                    amount=self._amount(),
                    layers=self.layers,
                    principal_id=st.principal_id,
                    principal_email=st.principal_email,
                    override_approval_id=override,
                    hold_seconds=max(3600, min(hold, st.policy.hold_seconds)),
                ),
                result_type=LayeredReserveOutcome,
                summary=f"reserve {st.price} for renewal {self.s.period}",
                **UNTIL_DONE,
            )
            if out.ok:
                # layers with nothing to enforce were not reserved: commit and release skip them
                self.layers = [layer for layer in self.layers if layer.ledger_id not in out.skipped]
                self.held = True
                return True
            refused = out.refused_by
            if out.code is not None and (refused is None or refused.kind not in OVERRIDABLE_KINDS):
                self.refused = out.code
                await self.trail.record(
                    "renewal.declined", outcome="refused", reason=out.code, amount=self._amount()
                )
                return False
            if override is not None:
                return False
            o = out.outcome
            details: dict[str, Any] = {
                "amount": st.price.model_dump(),
                "provider": st.provider,
                "resource_id": st.resource_id,
                "service_id": st.service_id,
                "due": due.isoformat(),
                "month": month_of(due),
                "renewal": True,
            }
            if o is not None:
                details |= {
                    "limit": o.limit.model_dump(),
                    "committed": o.committed.model_dump(),
                    "reserved": o.reserved.model_dump(),
                }
            self.status = "awaiting_approval"
            timeout = max(due - workflow.now(), timedelta(minutes=5))
            res = await self.gate.ask(
                approval_id=f"{self.wid}.spend_limit",
                kind="spend_limit",
                principal_id=st.principal_id,
                principal_email=st.principal_email,
                summary=f"the renewal of {st.service_id} {st.resource_id} for {st.price} on "
                f"{due.date().isoformat()} would exceed {month_of(due)}'s limit at {st.provider}",
                details=details,
                timeout=min(timeout, timedelta(seconds=max(st.approval_timeout_seconds, 300))),
            )
            self.status = "scheduled"
            if res.status != "approved":
                action: Any = "approval.timed_out" if res.status == "timed_out" else "approval.denied"
                await self.trail.record(action, outcome="refused", reason=res.status)
                return False
            await self.trail.record(
                "approval.granted",
                approved_by=st.principal_id,
                details={"approval_id": f"{self.wid}.spend_limit"},
            )
            override = f"{self.wid}.spend_limit"

    async def _charge(self, due: datetime, attempt: int) -> Charge:
        """One attempt: a fresh token for exactly the price, the provider charges it, the token is
        revoked whatever happened. Raises _Unpaid when no money moved."""
        st = self.start
        key = f"{self.wid}:p{self.s.period}"
        pm: PaymentMethodStatus = await workflow.execute_activity(
            "payment_method_status",
            st.customer_id,
            result_type=PaymentMethodStatus,
            summary="payment method on file?",
            **CALL,
        )
        if not pm.has_payment_method or pm.payment_method_id is None:
            raise _Unpaid(ErrorCode.PAYMENT_METHOD_REQUIRED)
        token: IssuedToken = await workflow.execute_activity(
            "issue_payment_token",
            PaymentTokenInput(
                customer_id=st.customer_id,
                payment_method_id=pm.payment_method_id,
                provider=st.provider,
                amount=self._amount(),
                idempotency_key=f"{key}:token-{attempt}",
                metadata={"qm_workflow_id": self.wid, "qm_period": str(self.s.period)},
                expires_at=workflow.now().replace(microsecond=0) + TOKEN_LIFETIME,
            ),
            result_type=IssuedToken,
            summary=f"payment token for {st.price} at {st.provider}",
            **CALL,
        )
        try:
            charge: Charge = await workflow.execute_activity(
                "renew_resource",
                RenewInput(
                    principal_id=st.principal_id,
                    provider=st.provider,
                    resource_id=st.resource_id,
                    period=self.s.period,
                    due=due,
                    payment_token=token.token_id,
                    idempotency_key=f"{key}:charge-{attempt}",
                    amount=None if self._amount() == st.price else self._amount().amount,
                ),
                result_type=Charge,
                summary=f"renew {st.resource_id} (period {self.s.period})",
                **CALL,
            )
        except ActivityError as err:
            cause = err.cause
            code = (
                cause.type if isinstance(cause, ApplicationError) and cause.type else "PROVIDER_UNAVAILABLE"
            )
            await self._revoke(token, f"{key}:token-{attempt}-revoke")
            raise _Unpaid(code) from None
        await self._revoke(token, f"{key}:token-{attempt}-revoke")
        return charge

    async def _revoke(self, token: IssuedToken, key: str) -> None:
        await workflow.execute_activity(
            "revoke_payment_token",
            RevokeTokenInput(token_id=token.token_id, idempotency_key=key),
            summary="revoke the renewal's payment token",
            **UNTIL_DONE,
        )

    async def _paid(self, due: datetime, charge: Charge) -> None:
        await workflow.execute_activity(
            "commit_spend",
            CommitLayers(
                purchase_id=f"{self.wid}:p{self.s.period}", amount=charge.amount, layers=self.layers
            ),
            summary=f"commit {charge.amount}",
            **UNTIL_DONE,
        )
        self.held = False
        self.status = "scheduled"
        # the credit this charge used (the price less what was charged) is spent
        self.s.credit = max(self.s.credit - (self.start.price.amount - charge.amount.amount), 0)
        await self.trail.record(
            "renewal.charged", amount=charge.amount, details={"period": self.s.period, "due": due.isoformat()}
        )
        await self._notice("renewal_charged", due, f"{self.start.resource_id} renewed for {charge.amount}")

    async def _release(self) -> None:
        if self.held:
            await workflow.execute_activity(
                "release_spend",
                ReleaseLayers(purchase_id=f"{self.wid}:p{self.s.period}", layers=self.layers),
                summary="release the renewal's reservation",
                **UNTIL_DONE,
            )
            self.held = False

    async def _suspend(self, due: datetime, why: str) -> None:
        """Docs/billing.md: a reversible resource is removed; any other stops renewing and lapses."""
        st = self.start
        await self._release()
        self.status = "suspended"
        removed = False
        if st.reversible:
            try:
                await workflow.execute_activity(
                    "remove_resource",
                    RemoveInput(
                        principal_id=st.principal_id,
                        provider=st.provider,
                        resource_id=st.resource_id,
                        idempotency_key=f"{self.wid}:p{self.s.period}:suspend",
                    ),
                    result_type=Resource,
                    summary=f"suspend: remove {st.resource_id}",
                    **CALL,
                )
                removed = True
            except ActivityError:
                removed = False
        await self.trail.record(
            "renewal.suspended", outcome="failure", reason=why, details={"removed": removed}
        )
        if removed:
            await self.trail.record("resource.removed", reason="renewal unpaid")
        await self._notice(
            "renewal_suspended",
            due,
            f"{st.resource_id} is suspended ({why}); "
            + ("it was removed" if removed else "it will lapse at the provider"),
            suffix="-final",
        )
