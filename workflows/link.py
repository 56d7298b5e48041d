"""Link the principal's existing provider account (OAuth consent) without buying anything.

The same steps as the provisioning workflow's account step, alone: who asks (the API's proof for
this human and link), an existing connection is reused, else the provider is asked whether the
principal's attested email has an account; if so, the human consents at the provider and only the
callback carrying the pending state is accepted, and only an account whose verified email is the
principal's is linked. No customer charge, no resource: the result is a connection in the store.
"""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.payment import ResolveCustomer
    from models.approval import ApprovalDecision, DecisionOutcome
    from models.errors import ErrorCode
    from models.link import LinkRequest, LinkResult
    from models.payment import Customer
    from models.provisioning import (
        AccountInput,
        CompleteOAuth,
        ConnectionRef,
        OAuthCallback,
        OAuthStart,
        Policy,
        TermsRecord,
    )
    from models.session import Authorization, AuthorizationRequest
    from workflows.approval_gate import ApprovalGate
    from workflows.audit_trail import AuditTrail
    from workflows.provision import CALL, Stop, stop_from
    from workflows.search_attributes import QM_AGENT, QM_PRINCIPAL, QM_PROVIDER, QM_STATE, State
    from workflows.workflow_input import parse_input, raw_str

from temporalio.exceptions import ActivityError


@workflow.defn(name="LinkAccountWorkflow")
class LinkAccountWorkflow:
    def __init__(self) -> None:
        self.gate = ApprovalGate()
        self.oauth: OAuthCallback | None = None
        self.oauth_state: str | None = None
        self.ignored_callbacks: list[str] = []
        self.result = LinkResult(link_id="", provider="")

    @workflow.update(name="submit_decision")
    def submit_decision(self, decision: ApprovalDecision) -> DecisionOutcome:
        return self.gate.decide(decision)

    @workflow.signal(name="oauth_callback")
    def oauth_callback(self, callback: OAuthCallback) -> None:
        pending = self.oauth_state
        if self.oauth is None and pending is not None and hmac.compare_digest(callback.state, pending):
            self.oauth = callback
            return
        self.ignored_callbacks.append("already_completed" if self.oauth is not None else "state_mismatch")

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[dict[str, Any]]:
        return [r.model_dump(mode="json") for r in self.gate.pending()]

    @workflow.query(name="link_status")
    def link_status(self) -> LinkResult:
        return self.result

    async def _call(self, activity: str, arg: Any, result_type: type | None, summary: str) -> Any:
        try:
            return await workflow.execute_activity(
                activity,
                args=[arg] if arg is not None else [],
                result_type=result_type,
                summary=summary,
                **CALL,
            )
        except ActivityError as err:
            raise stop_from(err) from None

    @workflow.run
    async def run(self, raw: Any) -> LinkResult:
        parsed = parse_input(LinkRequest, raw)
        if isinstance(parsed, str):
            self.result = LinkResult(
                link_id=raw_str(raw, "link_id"),
                provider=raw_str(raw, "provider"),
                error_code=ErrorCode.INVALID_REQUEST,
                error_message=parsed,
            )
            return self.result
        req = parsed
        self.result = LinkResult(link_id=req.link_id, provider=req.provider)
        audit: AuditTrail | None = None
        try:
            audit = await self._link(req)
            self.result.outcome = "completed"
            workflow.upsert_search_attributes([QM_STATE.value_set(State.COMPLETED)])
            workflow.set_current_details(f"COMPLETED: {req.provider} account {self.result.link_action}")
        except Stop as stop:
            self.result.error_code, self.result.error_message = stop.code, stop.message
            workflow.upsert_search_attributes([QM_STATE.value_set(State.FAILED)])
            workflow.set_current_details(f"REJECTED: {stop.code}: {stop.message}; nothing was linked")
        if audit is not None:
            for reason in self.ignored_callbacks:
                await audit.record("oauth.callback_ignored", outcome="refused", reason=reason)
            await audit.record(
                "request.completed" if self.result.outcome == "completed" else "request.failed",
                outcome="success" if self.result.outcome == "completed" else "failure",
                reason=self.result.error_code,
            )
            await audit.flush()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.result

    async def _link(self, req: LinkRequest) -> AuditTrail:
        provider, wid = req.provider, workflow.info().workflow_id
        policy: Policy = await self._call("load_policy", None, Policy, "policy")
        auth: Authorization = await self._call(
            "authorize_actor",
            AuthorizationRequest(
                actor=req.actor, service_id=f"{provider}/account", action="link", request_id=req.link_id
            ),
            Authorization,
            "authorize the human",
        )
        if not auth.allowed:
            raise Stop(auth.code or ErrorCode.UNAUTHENTICATED, auth.reason or "not authorized")
        principal_id = auth.principal_id
        workflow.upsert_search_attributes(
            [
                QM_PRINCIPAL.value_set(principal_id),
                QM_PROVIDER.value_set(provider),
                QM_AGENT.value_set(req.actor.agent),
                QM_STATE.value_set(State.RUNNING),
            ]
        )
        audit = AuditTrail(
            workflow_id=wid, principal_id=principal_id, agent_chain=auth.agent_chain, request_id=req.link_id,
            provider=provider,
        )  # fmt: skip
        await audit.record("request.received", details={"link": provider})
        record = TermsRecord(principal_id=principal_id, provider=provider, terms_version="")
        conn: ConnectionRef | None = await self._call(
            "find_connection", record, ConnectionRef, "linked before?"
        )
        if conn is not None:
            self.result.link_action, self.result.already_linked = conn.link_action, True
            return audit
        workflow.set_current_details(f"asking {provider} whether the principal has an account")
        customer: Customer = await self._call(
            "resolve_customer",
            ResolveCustomer(
                email=str(req.actor.principal_email),
                principal_id=principal_id,
                idempotency_key=f"customer-{principal_id}",
            ),
            Customer,
            "resolve the principal's Stripe customer (the identity assertion's subject)",
        )
        inp = AccountInput(
            provider=provider, principal_id=principal_id, principal_email=str(req.actor.principal_email),
            customer_id=customer.customer_id, idempotency_key=f"{wid}.oauth_consent",
        )  # fmt: skip
        if not await self._call("lookup_account", inp, bool, f"does the principal have a {provider} account"):
            raise Stop(
                ErrorCode.NOT_FOUND,
                f"no {provider} account for your email to link (qm provision creates one after the terms)",
            )
        start: OAuthStart = await self._call("start_oauth", inp, OAuthStart, "start OAuth + PKCE")
        self.oauth_state = start.state
        await audit.record("approval.requested", details={"kind": "oauth_consent"})
        await audit.flush()
        res = await self.gate.ask(
            approval_id=f"{wid}.oauth_consent",
            kind="oauth_consent",
            principal_id=principal_id,
            principal_email=str(req.actor.principal_email),
            summary=f"link your existing {provider} account to Quartermaster (nothing is bought)",
            details={"authorization_url": start.authorization_url, "provider": provider},
            timeout=timedelta(seconds=policy.approval_timeout_seconds),
            satisfied_by=lambda: self.oauth is not None,
        )
        if res.status == "timed_out":
            raise Stop(ErrorCode.APPROVAL_TIMED_OUT, "oauth_consent approval timed out")
        if res.status != "approved" or self.oauth is None or self.oauth.code is None:
            raise Stop(ErrorCode.APPROVAL_DENIED, f"OAuth consent refused at {provider}")
        conn = await self._call(
            "complete_oauth",
            CompleteOAuth(
                provider=provider, principal_id=principal_id, state=start.state, code=self.oauth.code,
                principal_email=str(req.actor.principal_email),
            ),
            ConnectionRef,
            "exchange the authorization code",
        )  # fmt: skip
        self.result.link_action = conn.link_action
        await audit.record("account.linked", details={"link_action": conn.link_action})
        return audit
