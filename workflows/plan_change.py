"""`PlanChangeWorkflow`: an upgrade or downgrade of a renewing resource within the catalog's
`allowed_updates`, prorated over the current billing period (models.plan_change).

An upgrade's difference is due now: the human approves it (`purchase`), it is reserved under the
monthly cap (and the session's budget), charged by the provider through a fresh Shared Payment Token
for exactly that amount, and committed. A downgrade charges nothing and credits its difference to the
next renewal. Either way the renewal is told the new service and price (`plan_changed`). Keys derive
from the workflow id (`plan-<resource>-<request id>`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.payment import RevokeTokenInput
    from models.approval import ApprovalDecision, DecisionOutcome
    from models.errors import ErrorCode
    from models.ledger import (
        CommitLayers,
        LayeredReserveOutcome,
        LedgerLayer,
        ReleaseLayers,
        ReserveLayers,
        monthly_ledger_id,
    )
    from models.money import Money
    from models.payment import PaymentMethodStatus
    from models.plan_change import (
        ChangePlanInput,
        PlanChanged,
        PlanChangedInput,
        PlanChangeQuote,
        PlanChangeRequest,
        PlanChangeResult,
        prorate,
    )
    from models.provider import Resource
    from models.provisioning import DiscoverInput, IssuedToken, PaymentTokenInput, Quote
    from models.renewal import RenewalTarget, RenewalView
    from workflows.approval_gate import ApprovalGate
    from workflows.provision import CALL, UNDO, Stop, stop_from
    from workflows.resource_actions import _begin
    from workflows.workflow_input import parse_input, raw_str


@workflow.defn(name="PlanChangeWorkflow")
class PlanChangeWorkflow:
    def __init__(self) -> None:
        self.gate = ApprovalGate()

    @workflow.update(name="submit_decision")
    def submit_decision(self, decision: ApprovalDecision) -> DecisionOutcome:
        return self.gate.decide(decision)

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[dict[str, Any]]:
        return [r.model_dump(mode="json") for r in self.gate.pending()]

    async def _call(
        self, activity: str, arg: Any, result_type: type | None, summary: str, **opts: Any
    ) -> Any:
        try:
            return await workflow.execute_activity(
                activity, arg, result_type=result_type, summary=summary, **{**CALL, **opts}
            )
        except ActivityError as err:
            raise stop_from(err) from None

    @workflow.run
    async def run(self, raw: Any) -> PlanChangeResult:
        req = parse_input(PlanChangeRequest, raw)
        if isinstance(req, str):
            return PlanChangeResult(
                resource_id=raw_str(raw, "resource_id"),
                outcome="rejected",
                error_code=ErrorCode.INVALID_REQUEST,
                error_message=req,
            )
        self.wid = workflow.info().workflow_id
        begun = await _begin(req.actor, req.to_service_id, req.resource_id, "provision", req.request_id)
        if not isinstance(begun, tuple):
            return PlanChangeResult(
                resource_id=req.resource_id,
                outcome="rejected",
                error_code=begun.error_code,
                error_message=begun.error_message,
            )
        self.auth, self.trail, self.ref = begun
        self.quote: PlanChangeQuote | None = None
        try:
            result = await self._change(req)
        except Stop as stop:
            await self.trail.record("request.failed", outcome="failure", reason=stop.code)
            result = PlanChangeResult(
                resource_id=req.resource_id,
                outcome="rejected",
                quote=self.quote,
                error_code=stop.code,
                error_message=stop.message,
            )
        await self.trail.flush()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return result

    async def _change(self, req: PlanChangeRequest) -> PlanChangeResult:
        provider = self.ref.provider
        view: RenewalView | None = await self._call(
            "renewal_view",
            RenewalTarget(provider=provider, resource_id=req.resource_id),
            RenewalView,
            "the resource's renewal",
        )
        if view is None or view.anchor is None or view.status not in ("scheduled", "past_due"):
            raise Stop(ErrorCode.PLAN_CHANGE_NOT_ALLOWED, "only a renewing paid resource changes plan")
        if view.service_id != req.service_id:
            raise Stop(ErrorCode.INVALID_REQUEST, f"the resource is {view.service_id}, not {req.service_id}")
        old: Quote = await self._call(
            "discover", DiscoverInput(service_id=view.service_id), Quote, f"discover {view.service_id}"
        )
        new: Quote = await self._call(
            "discover", DiscoverInput(service_id=req.to_service_id), Quote, f"discover {req.to_service_id}"
        )
        if req.to_service_id not in old.service.allowed_updates:
            raise Stop(
                ErrorCode.PLAN_CHANGE_NOT_ALLOWED, f"{view.service_id} cannot become {req.to_service_id}"
            )
        if new.recurring is None or new.interval != view.interval:
            raise Stop(ErrorCode.PLAN_CHANGE_NOT_ALLOWED, "the new plan must renew on the same interval")
        quote = prorate(
            resource_id=req.resource_id,
            from_service_id=view.service_id,
            to_service_id=req.to_service_id,
            old_price=view.price,
            new_price=new.recurring,
            interval=view.interval,
            anchor=view.anchor,
            next_period=view.period,
            now=workflow.now(),
        )
        self.quote = quote
        if quote.direction != req.direction:
            raise Stop(
                ErrorCode.PLAN_CHANGE_NOT_ALLOWED,
                f"{req.to_service_id} is a {quote.direction} from {view.service_id}",
            )
        charged: Resource | None = None
        if quote.due_now.amount > 0:
            charged = await self._upgrade(req, view, quote)
        else:
            charged = await self._call(
                "change_plan",
                ChangePlanInput(
                    principal_id=self.auth.principal_id,
                    provider=provider,
                    resource_id=req.resource_id,
                    to_service_id=req.to_service_id,
                    idempotency_key=f"{self.wid}:plan",
                ),
                Resource,
                f"downgrade to {req.to_service_id}",
                **UNDO,
            )
        await self._call(
            "plan_changed",
            PlanChangedInput(
                provider=provider,
                resource_id=req.resource_id,
                change=PlanChanged(
                    service_id=req.to_service_id, price=new.recurring, credit=quote.next_renewal_credit
                ),
            ),
            None,
            "tell the renewal",
            **UNDO,
        )
        await self.trail.record(
            "request.completed",
            details={
                "from": view.service_id,
                "to": req.to_service_id,
                "due_now": quote.due_now.model_dump(),
                "credit": quote.next_renewal_credit.model_dump(),
            },
        )
        charge = charged.charge if charged is not None else None
        return PlanChangeResult(
            resource_id=req.resource_id,
            outcome="completed",
            quote=quote,
            charged=charge.amount if charge else None,
            payment_reference=charge.payment_reference if charge else None,
        )

    async def _upgrade(self, req: PlanChangeRequest, view: RenewalView, quote: PlanChangeQuote) -> Resource:
        """Approve, reserve, charge exactly the prorated difference, commit."""
        principal = self.auth.principal_id
        res = await self.gate.ask(
            approval_id=f"{self.wid}.purchase",
            kind="purchase",
            principal_id=principal,
            principal_email=str(req.actor.principal_email),
            summary=f"upgrade {req.resource_id} from {quote.from_service_id} to {quote.to_service_id}: "
            f"{quote.due_now} now (prorated), then {quote.new_price} per {quote.interval}",
            details={
                "amount": quote.due_now.model_dump(),
                "service_id": req.to_service_id,
                "resource_id": req.resource_id,
                "plan_change": quote.model_dump(mode="json"),
            },
            timeout=timedelta(days=1),
        )
        if res.status != "approved":
            raise Stop(ErrorCode.APPROVAL_DENIED, f"upgrade not approved ({res.status})")
        if not view.customer_id:
            raise Stop(ErrorCode.PAYMENT_METHOD_REQUIRED, "no customer on the renewal")
        layers = [
            LedgerLayer(
                ledger_id=monthly_ledger_id(principal, self.ref.provider, workflow.now()),
                limit=Money(amount=10_000, currency=quote.due_now.currency),
                kind="monthly",
            ),
            *[LedgerLayer.model_validate(layer) for layer in self.auth.budget_layers],
        ]
        out: LayeredReserveOutcome = await self._call(
            "reserve_spend",
            ReserveLayers(purchase_id=self.wid, amount=quote.due_now, layers=layers, principal_id=principal),
            LayeredReserveOutcome,
            f"reserve {quote.due_now}",
        )
        if not out.ok:
            raise Stop(ErrorCode.BUDGET_EXCEEDED, f"{quote.due_now} does not fit this month's limit")
        try:
            pm: PaymentMethodStatus = await self._call(
                "payment_method_status", view.customer_id, PaymentMethodStatus, "payment method on file?"
            )
            if not pm.has_payment_method or pm.payment_method_id is None:
                raise Stop(ErrorCode.PAYMENT_METHOD_REQUIRED, "no card on file")
            token: IssuedToken = await self._call(
                "issue_payment_token",
                PaymentTokenInput(
                    customer_id=view.customer_id,
                    payment_method_id=pm.payment_method_id,
                    provider=self.ref.provider,
                    amount=quote.due_now,
                    idempotency_key=f"{self.wid}:token",
                    metadata={"qm_workflow_id": self.wid},
                    expires_at=workflow.now().replace(microsecond=0) + timedelta(hours=1),
                ),
                IssuedToken,
                f"payment token for {quote.due_now}",
            )
            try:
                changed: Resource = await self._call(
                    "change_plan",
                    ChangePlanInput(
                        principal_id=principal,
                        provider=self.ref.provider,
                        resource_id=req.resource_id,
                        to_service_id=req.to_service_id,
                        amount=quote.due_now,
                        payment_token=token.token_id,
                        idempotency_key=f"{self.wid}:plan",
                    ),
                    Resource,
                    f"upgrade to {req.to_service_id}",
                )
            finally:
                await workflow.execute_activity(
                    "revoke_payment_token",
                    RevokeTokenInput(token_id=token.token_id, idempotency_key=f"{self.wid}:token-revoke"),
                    summary="revoke the payment token",
                    **UNDO,
                )
        except Stop:
            await workflow.execute_activity(
                "release_spend",
                ReleaseLayers(purchase_id=self.wid, layers=layers),
                summary="release the reservation",
                **UNDO,
            )
            raise
        charged = (
            changed.charge.amount if changed.charge else Money(amount=0, currency=quote.due_now.currency)
        )
        await workflow.execute_activity(
            "commit_spend",
            CommitLayers(purchase_id=self.wid, amount=charged, layers=layers),
            summary=f"commit {charged}",
            **UNDO,
        )
        await self.trail.record("charge.made", amount=charged, resource_id=req.resource_id)
        return changed
