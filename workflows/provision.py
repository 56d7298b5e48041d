"""The provisioning workflow: discover -> quote -> identity -> account -> pay -> create -> credential.

It stops for a human only where the protocol says a human decides (terms, OAuth consent, payment
method, irreversible purchases, spend over the cap, missing information). Every side effect carries
an idempotency key derived from the workflow ID and step. Any failure after money or resources moved
is compensated, so the result is either `completed` or `undone` (or `rejected` when nothing moved).
"""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError
from temporalio.exceptions import TimeoutError as ActivityTimeoutError

with workflow.unsafe.imports_passed_through():
    from activities.payment import ResolveCustomer, RevokeTokenInput, SetupInput
    from activities.resources import RemoveInput
    from models.approval import ApprovalDecision, ApprovalKind, DecisionOutcome
    from models.audit import AuditAction
    from models.errors import ErrorCode
    from models.ledger import (
        MAX_HOLD_SECONDS,
        CommitLayers,
        LayeredReserveOutcome,
        LedgerLayer,
        ReleaseLayers,
        ReserveLayers,
        agent_layers,
        monthly_ledger_id,
    )
    from models.money import Money
    from models.payment import Customer, PaymentMethodStatus, SetupSession
    from models.provider import Charge, Resource, TermsAcceptance
    from models.provisioning import (
        AccountInput,
        CompleteOAuth,
        ConnectionRef,
        CreateResourceInput,
        DiscoverInput,
        IssuedCredential,
        IssuedToken,
        MintInput,
        OAuthCallback,
        OAuthStart,
        PaymentTokenInput,
        Policy,
        ProvisionResult,
        ProvisionStatus,
        Quote,
        RefundInput,
        ResourceRef,
        SubmitInformationInput,
        TermsRecord,
    )
    from models.renewal import RenewalPolicy, RenewalStart, renewal_retries
    from models.request import ProvisionRequest
    from models.session import Authorization, AuthorizationRequest, RecordCredential
    from workflows.approval_gate import ApprovalGate, RejectedAttempt
    from workflows.audit_trail import AuditTrail
    from workflows.search_attributes import (
        QM_AGENT,
        QM_PRINCIPAL,
        QM_PROVIDER,
        QM_RESOURCE,
        QM_SERVICE,
        QM_SESSION,
        QM_STATE,
        State,
    )
    from workflows.workflow_input import parse_input, raw_str

#: provider and Stripe calls: retried with backoff, given up after a bounded time. The activities
#: heartbeat while they wait (activities/heartbeat.py), so a killed worker's attempt is retried after
#: the heartbeat timeout instead of the whole start-to-close timeout.
CALL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=15),  # adapters time out after 10 s
    "heartbeat_timeout": timedelta(seconds=3),
    "schedule_to_close_timeout": timedelta(minutes=10),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
    ),
}
#: compensations must finish: no overall deadline
UNDO: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "heartbeat_timeout": timedelta(seconds=3),
    "retry_policy": RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5)),
}
#: polling a pending resource: the retry policy is the poll
POLL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=15),
    "heartbeat_timeout": timedelta(seconds=3),
    "schedule_to_close_timeout": timedelta(minutes=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=500),
        backoff_coefficient=1.5,
        maximum_interval=timedelta(seconds=10),
    ),
}
#: how long a payment token lives (from workflow time): long enough for the create call and its retries
PAYMENT_TOKEN_LIFETIME = timedelta(hours=1)
#: the payment-method poll (a fallback for a lost webhook) doubles its interval after each poll up to
#: an hour, or the wait's timeout / PAYMENT_POLLS_PER_WAIT when that is longer: ~31 polls over 24 h
PAYMENT_POLL_BACKOFF = 2.0
PAYMENT_POLL_MAX_EVERY = timedelta(hours=1)
PAYMENT_POLLS_PER_WAIT = 24
#: after the reservation, at most this many `information` rounds wait for the human
INFORMATION_ROUNDS = 3
#: One marker for every patch of this workflow up to it (and the approval gate's read model): a new
#: run records only this one. Each patch call also upserts `TemporalChangeVersion`, a billed action and
#: a visibility write on the server, so a new run used to pay for 2 to 5 of them. A patch added later
#: is a plain `workflow.patched` call again, until the next CURRENT_PATCH folds it in.
CURRENT_PATCH = "provision-current-1"
#: what the Temporal UI's current details say at each step (gates say what they wait for themselves)
STEP_DETAILS = {
    "discover": "discovering the service and its price at the provider",
    "account": "finding, linking or creating the principal's provider account",
    "identity": "resolving the principal's Stripe customer",
    "payment": "payment: card on file, spend reservation, payment token",
    "create": "creating the resource at the provider",
    "credential": "minting the scoped credential",
}
#: reads (and the idempotent get-or-create of the Stripe customer) that run back to back before the
#: first side effect: as local activities they share one workflow task. A retry repeats only reads;
#: `authorize_actor` consumes the identity token under a use id of the workflow and activity id,
#: which a retried local activity keeps, and `resolve_customer` carries its idempotency key.
LOCAL_READS = frozenset(
    {"load_policy", "authorize_actor", "discover", "find_connection", "resolve_customer",
     "payment_method_status"}
)  # fmt: skip
WAITING_CODES: dict[str, ErrorCode] = {
    "terms": ErrorCode.TERMS_ACCEPTANCE_REQUIRED,
    "payment_method": ErrorCode.PAYMENT_METHOD_REQUIRED,
    "oauth_consent": ErrorCode.OAUTH_CONSENT_REQUIRED,
    "purchase": ErrorCode.PURCHASE_APPROVAL_REQUIRED,
    "spend_limit": ErrorCode.SPEND_LIMIT_REACHED,
    "information": ErrorCode.INFORMATION_REQUIRED,
}


#: layers that refuse without asking: the code, and what the agent is told
_HARD_REFUSALS: dict[str, str] = {
    ErrorCode.BUDGET_EXCEEDED: "{amount} does not fit the budget {ledger}",
    ErrorCode.AGENT_MONTHLY_LIMIT_EXCEEDED: "{amount} does not fit this agent's monthly limit ({ledger})",
    ErrorCode.TRANSACTION_LIMIT_EXCEEDED: "{amount} is above this agent's per-purchase maximum",
    ErrorCode.VELOCITY_LIMIT_EXCEEDED: "this agent made its allowed purchases in the last hour ({ledger})",
}


class Stop(Exception):
    """A clean end with a stable code; everything done so far is compensated."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message


def stop_from(err: ActivityError) -> Stop:
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type:
        return Stop(cause.type, cause.message)
    return Stop(ErrorCode.PROVIDER_UNAVAILABLE, "a provider call did not succeed in time")


@workflow.defn(name="ProvisionWorkflow")
class ProvisionWorkflow:
    def __init__(self) -> None:
        self.gate = ApprovalGate()
        self._step = "received"
        self.oauth: OAuthCallback | None = None
        #: the pending OAuth state; only a callback carrying exactly this state is accepted
        self.oauth_state: str | None = None
        self.ignored_callbacks: list[str] = []
        self.audited_callbacks = 0
        self.payment_method_ready = False
        self.undo: list[tuple[str, Any]] = []
        #: what the provider charged for this request (seen on the created resource), and whether the
        #: provider can undo the resource (then compensation refunds the charge)
        self.charge: Charge | None = None
        self.reversible = True
        #: the reservation's expiry: the payment token must not outlive it
        self.reserved_until: Any = None
        self.result = ProvisionResult(request_id="", outcome="rejected", service_id="")
        self.audit: AuditTrail | None = None
        self.audited_attempts = 0
        #: the reads before the first side effect run as local activities (docs/performance.md)
        self.local_reads = False
        #: this run records CURRENT_PATCH instead of every patch before it (decided first in `run`)
        self.current = False

    @property
    def step(self) -> str:
        return self._step

    @step.setter
    def step(self, value: str) -> None:
        """Every step shows in the Temporal UI's current details (a gate shows what it waits for)."""
        self._step = value
        if value in STEP_DETAILS:
            workflow.set_current_details(STEP_DETAILS[value])

    def _patched(self, patch_id: str) -> bool:
        """`workflow.patched`, except that a run which recorded CURRENT_PATCH has every earlier patch."""
        return self.current or workflow.patched(patch_id)

    def _show_outcome(self) -> None:
        """The end, as an operator reads it in the UI: outcome, code, reason and what was undone."""
        r = self.result
        if r.outcome == "completed":
            text = f"COMPLETED: {r.service_id} {r.resource_id or ''}".rstrip()
            text += f", charged {r.charge.amount}" if r.charge is not None else ""
        else:
            text = f"{r.outcome.upper()}: {r.error_code}: {r.error_message or ''}".rstrip()
            text += f"; undone: {', '.join(r.compensations)}" if r.compensations else "; nothing had moved"
        workflow.set_current_details(text)
        if self._patched("outcome-memo"):
            workflow.upsert_memo({"outcome": r.outcome, "error_code": r.error_code})

    # -- handlers ---------------------------------------------------------------------------------
    @workflow.update(name="submit_decision")
    def submit_decision(self, decision: ApprovalDecision) -> DecisionOutcome:
        """Synchronous, so the check and the state change are one atomic step (and replay-safe)."""
        return self.gate.decide(decision)

    @workflow.signal(name="decide")
    def decide(self, decision: ApprovalDecision) -> None:
        self.gate.decide(decision)

    @workflow.signal(name="oauth_callback")
    def oauth_callback(self, callback: OAuthCallback) -> None:
        """Accept the one callback whose whole state is the pending one; ignore (and audit) the rest,
        so a forged callback cannot take the human's place."""
        pending = self.oauth_state
        if self.oauth is None and pending is not None and hmac.compare_digest(callback.state, pending):
            self.oauth = callback
            return
        self.ignored_callbacks.append("already_completed" if self.oauth is not None else "state_mismatch")

    @workflow.signal(name="payment_method_ready")
    def payment_method_ready_signal(self) -> None:
        self.payment_method_ready = True

    @workflow.query(name="status")
    def status(self) -> ProvisionStatus:
        return ProvisionStatus(
            request_id=self.result.request_id,
            step=self.step,
            # the agent's view: human-only details (the OAuth and Checkout URLs) go to the human's channel
            pending_approvals=[r.for_agent().model_dump(mode="json") for r in self.gate.pending()],
            resource_id=self.result.resource_id,
            link_action=self.result.link_action,
        )

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[dict[str, Any]]:
        return [r.model_dump(mode="json") for r in self.gate.pending()]

    # -- main -------------------------------------------------------------------------------------
    @workflow.run
    async def run(self, raw: Any) -> ProvisionResult:
        """`raw` is the ProvisionRequest as JSON: validated here, so bad input ends the workflow."""
        # before any command: a history recorded before CURRENT_PATCH replays without its marker, and
        # takes each earlier patch as it did
        self.current = workflow.patched(CURRENT_PATCH)
        if self.current:
            self.gate.read_model = True
        parsed = parse_input(ProvisionRequest, raw)
        if isinstance(parsed, str):
            workflow.upsert_search_attributes([QM_STATE.value_set(State.FAILED)])
            self.result = ProvisionResult(
                request_id=raw_str(raw, "request_id"),
                outcome="rejected",
                service_id=raw_str(raw, "service_id"),
                error_code=ErrorCode.INVALID_REQUEST,
                error_message=parsed,
            )
            self._show_outcome()
            return self.result
        req = parsed
        self.req = req
        self.wid = workflow.info().workflow_id
        self.result = ProvisionResult(
            request_id=req.request_id, outcome="rejected", service_id=req.service_id
        )
        try:
            await self._provision(req)
            self.result.outcome = "completed"
            workflow.upsert_search_attributes(
                [QM_STATE.value_set(State.COMPLETED), QM_RESOURCE.value_set(self.result.resource_id or "")]
            )
        except Stop as stop:
            moved = bool(self.undo)
            await self._compensate()
            self.result.outcome = "undone" if moved else "rejected"
            self.result.error_code = stop.code
            self.result.error_message = stop.message
            workflow.upsert_search_attributes(
                [QM_STATE.value_set(State.COMPENSATED if moved else State.FAILED)]
            )
        except FailureError:
            await self.gate.settled()  # a workflow that fails leaves no approval row open either
            raise
        await self.gate.settled()  # every approval it closed has left the human's list
        self._show_outcome()
        if self.audit is not None:
            await self._audit_rejected(self.gate.attempts[self.audited_attempts :])  # late or replayed codes
            await self._audit_ignored_callbacks()
            await self.audit.record(
                "request.completed" if self.result.outcome == "completed" else "request.failed",
                outcome="success" if self.result.outcome == "completed" else "failure",
                reason=self.result.error_code,
                resource_id=self.result.resource_id,
            )
            await self.audit.flush()
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.result

    async def _call(
        self, activity: str, arg: Any, result_type: type | None, summary: str, **opts: Any
    ) -> Any:
        options = {**CALL, **opts}
        local = self.local_reads and activity in LOCAL_READS
        try:
            if local:
                options.pop("heartbeat_timeout", None)  # a local activity does not heartbeat
                return await workflow.execute_local_activity(
                    activity,
                    args=[] if arg is None else [arg],
                    result_type=result_type,
                    summary=summary,
                    **options,
                )
            return await workflow.execute_activity(
                activity,
                args=[] if arg is None else [arg],
                result_type=result_type,
                summary=summary,
                **options,
            )
        except ActivityError as err:
            raise stop_from(err) from None
        except (ApplicationError, ActivityTimeoutError) as err:  # a local activity's failure comes unwrapped
            if not local:
                raise
            code = err.type if isinstance(err, ApplicationError) and err.type else None
            raise Stop(code or ErrorCode.PROVIDER_UNAVAILABLE, err.message) from None

    async def _ask(
        self, kind: ApprovalKind, summary: str, details: dict[str, Any], **wait: Any
    ) -> ApprovalDecision | None:
        """A human gate. Returns the decision (None when satisfied otherwise); raises Stop on deny."""
        approval_id = f"{self.wid}.{kind}"
        n = sum(1 for a in self.gate.closed if a.startswith(approval_id))
        if n:
            approval_id = f"{approval_id}-{n + 1}"
        assert self.audit is not None
        # the human's list drops the approval while the request goes on (awaited before the end)
        self.gate.close_in_background = self._patched("approval-close-in-background")
        before, self.step = self.step, f"awaiting {kind} approval"
        await self.audit.record("approval.requested", details={"approval_id": approval_id, "kind": kind})
        await self.audit.flush()  # the trail is complete up to the wait
        res = await self.gate.ask(
            approval_id=approval_id,
            kind=kind,
            principal_id=self.principal_id,
            principal_email=str(self.req.actor.principal_email),
            summary=summary,
            details=details,
            timeout=timedelta(seconds=self.policy.approval_timeout_seconds),
            on_rejected=self._audit_rejected,
            **wait,
        )
        self.step = before  # the gate cleared its details: show the step again
        if res.status == "approved":
            await self.audit.record(
                "approval.granted",
                approved_by=self.principal_id if res.decision else None,
                details={
                    "approval_id": approval_id,
                    "kind": kind,
                    "via": "code" if res.decision else "provider",
                },
            )
            return res.decision
        action: AuditAction = "approval.timed_out" if res.status == "timed_out" else "approval.denied"
        reason = res.decision.reason if res.decision and res.decision.reason else res.status
        await self.audit.record(
            action, outcome="refused", reason=reason, details={"approval_id": approval_id}
        )
        if res.status == "timed_out":
            raise Stop(ErrorCode.APPROVAL_TIMED_OUT, f"{kind} approval timed out")
        if res.status == "locked_out":
            raise Stop(ErrorCode.APPROVAL_REJECTED, f"{kind} approval closed after too many wrong codes")
        raise Stop(ErrorCode.APPROVAL_DENIED, f"{kind} denied: {reason}")

    async def _audit_rejected(self, attempts: list[RejectedAttempt]) -> None:
        assert self.audit is not None
        if not attempts:
            return
        self.audited_attempts += len(attempts)
        for attempt in attempts:
            await self.audit.record(
                "approval.forged_attempt",
                outcome="refused",
                reason=attempt.status,
                details={"approval_id": attempt.approval_id},
            )
        await self.audit.flush()

    async def _audit_ignored_callbacks(self) -> None:
        """Audit OAuth callbacks that did not match the pending state (buffered with the next flush)."""
        assert self.audit is not None
        for reason in self.ignored_callbacks[self.audited_callbacks :]:
            await self.audit.record("oauth.callback_ignored", outcome="refused", reason=reason)
        self.audited_callbacks = len(self.ignored_callbacks)

    async def _provision(self, req: ProvisionRequest) -> None:
        provider = req.provider
        self.local_reads = self._patched("reads-as-local-activities")
        self.policy: Policy = await self._call("load_policy", None, Policy, "policy")
        # 0. who is asking, and may they
        auth: Authorization = await self._call(
            "authorize_actor",
            AuthorizationRequest(
                actor=req.actor,
                service_id=req.service_id,
                amount=req.max_price,
                action="provision",
                request_id=req.request_id,
            ),
            Authorization,
            "authorize the actor",
        )
        self.principal_id = auth.principal_id
        self.auth = auth
        self.result.principal_id = auth.principal_id
        self.result.agent_chain = auth.agent_chain
        self.audit = AuditTrail(
            workflow_id=self.wid,
            principal_id=auth.principal_id,
            agent_chain=auth.agent_chain,
            session_ids=auth.session_ids,
            request_id=req.request_id,
            provider=provider,
            service_id=req.service_id,
        )
        attrs = [
            QM_PRINCIPAL.value_set(auth.principal_id),
            QM_PROVIDER.value_set(provider),
            QM_SERVICE.value_set(req.service_id),
            QM_AGENT.value_set(auth.agent_chain[-1] if auth.agent_chain else req.actor.agent),
            QM_STATE.value_set(State.RUNNING),
        ]
        if auth.session_ids:
            attrs.append(QM_SESSION.value_set(auth.session_ids[-1]))
        # only what the client did not already set at start: each upsert is a billed action
        current = workflow.info().typed_search_attributes
        changed = [a for a in attrs if current.get(a.key) != a.value]
        if changed:
            workflow.upsert_search_attributes(changed)
        await self.audit.record("request.received", details={"name": req.name})
        await self.audit.record(
            "authorization.decided", outcome="success" if auth.allowed else "refused", reason=auth.reason
        )
        if not auth.allowed:
            raise Stop(auth.code or ErrorCode.SESSION_INVALID, auth.reason or "not authorized")

        # 1-2. discover and quote
        self.step = "discover"
        quote: Quote = await self._call(
            "discover",
            DiscoverInput(
                service_id=req.service_id, configuration=req.configuration, max_price=req.max_price
            ),
            Quote,
            f"discover {req.service_id}",
        )
        offered = quote.service.scopes
        scopes = req.scopes or offered
        if auth.allowed_scopes is not None:
            scopes = [s for s in scopes if s in auth.allowed_scopes]
        if not set(scopes) <= set(offered) or (not scopes and offered):
            raise Stop(
                ErrorCode.INVALID_REQUEST, "requested scopes are not offered by the service or not allowed"
            )

        # 3-4. identity and account: a linked account is reused; the Stripe customer is resolved only
        # when an account must be linked or created, or money is due
        self.step = "account"
        paid = quote.due_now is not None and quote.due_now.amount > 0
        conn: ConnectionRef | None = await self._call(
            "find_connection",
            TermsRecord(principal_id=self.principal_id, provider=provider, terms_version=quote.terms_version),
            ConnectionRef,
            "reuse a connection",
        )
        customer = await self._customer(req) if conn is None or paid else None
        if conn is None:
            assert customer is not None
            conn = await self._account(req, quote, customer)
        self.result.link_action = conn.link_action

        # 5. pay
        token: IssuedToken | None = None
        if paid:
            assert customer is not None
            self.step = "payment"
            token = await self._pay(req, quote, customer)

        # 6. create
        self.step = "create"
        resource: Resource = await self._call(
            "create_resource",
            CreateResourceInput(
                principal_id=self.principal_id,
                provider=provider,
                service_id=req.service_id,
                name=req.name,
                configuration=req.configuration,
                payment_token=token.token_id if token else None,
                idempotency_key=f"{self.wid}:create",
            ),
            Resource,
            f"create {req.service_id} {req.name}",
        )
        ref = ResourceRef(principal_id=self.principal_id, provider=provider, resource_id=resource.resource_id)
        self.reversible = quote.reversible
        self.charge = resource.charge  # money moved: compensation must refund it or keep it counted
        if quote.reversible:
            self.undo.append(("remove_resource", ref))
        self.result.resource_id = resource.resource_id
        resource = await self._settle(ref, resource)
        self.charge = resource.charge or self.charge
        self.result.resource_status = resource.status
        if resource.charge is not None:
            self.result.charge = resource.charge
            await self.audit.record("charge.made", amount=resource.charge.amount, resource_id=ref.resource_id)
        await self.audit.record("resource.created", resource_id=ref.resource_id)
        # the spend is committed once the request can no longer be undone (after the credential), so an
        # undo after the charge can still release the reservation it refunds
        commit_last = token is not None and self._patched("commit-spend-last")
        if token is not None:
            if not commit_last:
                await self._commit_spend(resource)
            await self._revoke_token(token, "consumed")

        # 7. credential
        self.step = "credential"
        ttl = req.credential_ttl_seconds
        if auth.max_credential_ttl_seconds is not None:
            ttl = min(ttl, auth.max_credential_ttl_seconds)
        cred: IssuedCredential = await self._call(
            "mint_credential",
            MintInput(ref=ref, scopes=scopes, ttl_seconds=ttl, idempotency_key=f"{self.wid}:credential"),
            IssuedCredential,
            f"mint a {ttl}s credential",
        )
        self.result.credential = cred
        await self.audit.record(
            "credential.minted", resource_id=ref.resource_id, credential_id=cred.credential_id
        )
        if auth.session_ids:
            await self._call(
                "record_credential",
                RecordCredential(
                    session_id=auth.session_ids[-1],
                    provider=provider,
                    credential_id=cred.credential_id,
                    account_ref=self.principal_id,
                    expires_at=cred.expires_at,
                ),
                None,
                "record the credential on the session",
            )
        if commit_last:
            await self._commit_spend(resource)
        self.undo.clear()  # fully done: nothing to compensate any more
        if token is not None and customer is not None and self._patched("start-renewal"):
            await self._schedule_renewals(req, quote, customer, resource)
        self.step = "done"

    async def _schedule_renewals(
        self, req: ProvisionRequest, quote: Quote, customer: Customer, resource: Resource
    ) -> None:
        """A recurring price renews under Quartermaster's control (workflows.renewal)."""
        assert self.audit is not None
        if quote.recurring is None or quote.interval not in ("month", "year"):
            return
        price = resource.charge.amount if resource.charge else quote.recurring
        await self._call(
            "start_renewal",
            RenewalStart(
                principal_id=self.principal_id,
                principal_email=str(req.actor.principal_email),
                provider=req.provider,
                service_id=req.service_id,
                resource_id=resource.resource_id,
                customer_id=customer.customer_id,
                price=price if price.amount else quote.recurring,
                interval=quote.interval,
                anchor=workflow.now(),
                reversible=quote.reversible,
                # the session's layers, not this request's own budget (it covered this request only)
                budget_layers=[
                    layer
                    for layer in self.layers
                    if layer.kind == "budget" and not layer.ledger_id.startswith("budget-request-")
                ],
                agent_chain=self._agents(req),
                policy=RenewalPolicy(
                    notice_seconds=self.policy.renewal_notice_seconds,
                    grace_seconds=self.policy.renewal_grace_seconds,
                    retry_after_seconds=renewal_retries(self.policy.renewal_grace_seconds),
                ),
                approval_timeout_seconds=self.policy.approval_timeout_seconds,
            ),
            None,
            f"schedule the renewals of {resource.resource_id}",
            **UNDO,
        )

    async def _customer(self, req: ProvisionRequest) -> Customer:
        """The principal's Stripe customer (found by exact email, else created; idempotent)."""
        self.step = "identity"
        customer: Customer = await self._call(
            "resolve_customer",
            ResolveCustomer(
                email=str(req.actor.principal_email),
                principal_id=self.principal_id,
                idempotency_key=f"customer-{self.principal_id}",
            ),
            Customer,
            "resolve the principal's Stripe customer",
        )
        self.step = "account"
        return customer

    async def _account(self, req: ProvisionRequest, quote: Quote, customer: Customer) -> ConnectionRef:
        """Link the principal's existing account (OAuth consent) or create one (after terms)."""
        assert self.audit is not None
        provider = req.provider
        inp = AccountInput(
            provider=provider,
            principal_id=self.principal_id,
            principal_email=str(req.actor.principal_email),
            customer_id=customer.customer_id,
            idempotency_key=f"{self.wid}.oauth_consent",
        )
        exists: bool = await self._call(
            "lookup_account", inp, bool, f"does the principal have a {provider} account"
        )
        if exists:
            start: OAuthStart = await self._call("start_oauth", inp, OAuthStart, "start OAuth + PKCE")
            self.oauth_state = start.state
            await self._ask(
                "oauth_consent",
                f"link your existing {provider} account to Quartermaster",
                {"authorization_url": start.authorization_url, "provider": provider},
                satisfied_by=lambda: self.oauth is not None and self.oauth.state == start.state,
            )
            await self._audit_ignored_callbacks()
            cb = self.oauth
            if cb is None or cb.code is None:
                raise Stop(ErrorCode.APPROVAL_DENIED, f"OAuth consent refused at {provider}")
            try:
                conn: ConnectionRef = await self._call(
                    "complete_oauth",
                    CompleteOAuth(
                        provider=provider,
                        principal_id=self.principal_id,
                        state=start.state,
                        code=cb.code,
                        principal_email=str(req.actor.principal_email),
                    ),
                    ConnectionRef,
                    "exchange the authorization code",
                )
            except Stop as stop:
                await self.audit.record("account.link_refused", outcome="refused", reason=stop.code)
                raise
            await self.audit.record("account.linked", details={"link_action": conn.link_action})
            return conn
        record = TermsRecord(
            principal_id=self.principal_id, provider=provider, terms_version=quote.terms_version
        )
        approval_id = f"{self.wid}.terms"
        if not await self._call("terms_accepted", record, bool, "terms accepted before?"):
            await self._ask(
                "terms",
                f"accept {provider}'s terms of service version {quote.terms_version}",
                {"tos_url": quote.tos_url, "terms_version": quote.terms_version, "provider": provider},
            )
            await self.audit.record("terms.accepted", details={"terms_version": quote.terms_version})
        inp.terms = TermsAcceptance(
            terms_version=quote.terms_version,
            accepted_at=workflow.now(),
            accepted_by=self.principal_id,
            approval_id=approval_id,
        )
        inp.idempotency_key = f"{self.wid}:account"
        conn = await self._call("create_account", inp, ConnectionRef, f"create a {provider} account")
        details: dict[str, Any] = {"link_action": conn.link_action}
        if conn.reused:
            details["reused"] = True  # made by another request of this principal while this one waited
        await self.audit.record("account.created", details=details)
        return conn

    async def _pay(self, req: ProvisionRequest, quote: Quote, customer: Customer) -> IssuedToken:
        assert self.audit is not None and quote.due_now is not None
        amount = quote.due_now
        pm: PaymentMethodStatus = await self._call(
            "payment_method_status", customer.customer_id, PaymentMethodStatus, "payment method on file?"
        )
        if not pm.has_payment_method:
            setup: SetupSession = await self._call(
                "create_setup_session",
                SetupInput(
                    customer_id=customer.customer_id,
                    workflow_id=self.wid,
                    idempotency_key=f"{self.wid}:setup",
                ),
                SetupSession,
                "Checkout setup session",
            )
            latest: list[PaymentMethodStatus] = []

            async def poll() -> bool:
                status: PaymentMethodStatus = await self._call(
                    "payment_method_status",
                    customer.customer_id,
                    PaymentMethodStatus,
                    "payment method attached?",
                )
                latest.append(status)
                return status.has_payment_method

            # the Stripe webhook signals `payment_method_ready`; the poll is only a fallback for a lost
            # webhook, backing off to a bounded number of polls however long the human takes
            backoff = self._patched("payment-wait-backoff")
            timeout = timedelta(seconds=self.policy.approval_timeout_seconds)
            await self._ask(
                "payment_method",
                "add a payment method (the agent never sees it)",
                {"checkout_url": setup.url},
                satisfied_by=lambda: self.payment_method_ready,
                poll=poll,
                poll_every=timedelta(seconds=self.policy.payment_poll_seconds),
                poll_backoff=PAYMENT_POLL_BACKOFF if backoff else 1.0,
                poll_max_every=max(PAYMENT_POLL_MAX_EVERY, timeout / PAYMENT_POLLS_PER_WAIT),
            )
            pm = await self._call(
                "payment_method_status", customer.customer_id, PaymentMethodStatus, "payment method attached"
            )
            if not pm.has_payment_method or pm.payment_method_id is None:
                raise Stop(ErrorCode.PAYMENT_METHOD_REQUIRED, "no payment method was attached")
        if not quote.reversible and amount.amount > self.policy.purchase_approval_above:
            await self._ask(
                "purchase",
                f"approve an irreversible purchase of {req.service_id} '{req.name}'"
                + (f" ({domain})" if isinstance(domain := req.configuration.get("domain"), str) else "")
                + f" for {amount}",
                {
                    "amount": amount.model_dump(),
                    "service_id": req.service_id,
                    "name": req.name,
                    "reversible": False,
                },
            )
        await self._reserve(req, amount)
        assert pm.payment_method_id is not None
        # every parameter of the keyed call comes from the workflow: a retry sends the same request
        expires_at = workflow.now().replace(microsecond=0) + PAYMENT_TOKEN_LIFETIME
        if self.reserved_until is not None:
            expires_at = min(expires_at, self.reserved_until)
        token: IssuedToken = await self._call(
            "issue_payment_token",
            PaymentTokenInput(
                customer_id=customer.customer_id,
                payment_method_id=pm.payment_method_id,
                provider=req.provider,
                amount=amount,
                idempotency_key=f"{self.wid}:payment-token",
                metadata={"qm_workflow_id": self.wid, "qm_request_id": req.request_id},
                expires_at=expires_at,
            ),
            IssuedToken,
            f"payment token for {amount} at {req.provider}",
        )
        self.undo.append(("revoke_payment_token", token))
        await self.audit.record("payment_token.issued", amount=amount)
        return token

    def _agents(self, req: ProvisionRequest) -> list[str]:
        """The agents whose limits bind this purchase (and its renewals): every agent of the chain, so a
        delegate's purchases count under its delegators' limits too (it could otherwise escape them
        under a new name); a human's own request (no session) has none."""
        if req.actor.kind == "agent" and self._patched("qm-agent-limit-layers"):
            return list(dict.fromkeys(self.auth.agent_chain or [req.actor.agent]))
        return []

    def _layers(self, req: ProvisionRequest, amount: Money) -> list[LedgerLayer]:
        """Every ledger this purchase must fit in. Limits of the monthly and agent layers come from the
        principal's limits (`limit` here names the currency); budgets carry their own."""
        placeholder = Money(amount=10_000, currency=amount.currency)
        layers = [
            LedgerLayer(
                ledger_id=monthly_ledger_id(self.principal_id, req.provider, workflow.now()),
                limit=placeholder,
                kind="monthly",
            )
        ]
        for agent in self._agents(req):
            layers += agent_layers(self.principal_id, agent, workflow.now(), amount.currency)
        layers += [LedgerLayer.model_validate(layer) for layer in self.auth.budget_layers]
        if req.budget is not None:
            layers.append(
                LedgerLayer(ledger_id=f"budget-request-{req.request_id}", limit=req.budget, kind="budget")
            )
        return layers

    async def _reserve(self, req: ProvisionRequest, amount: Money) -> None:
        assert self.audit is not None
        self.layers = self._layers(req, amount)
        purchase_id = self.wid
        override: str | None = None
        # held until the request ends: through every `information` round and the calls around them
        waits = INFORMATION_ROUNDS * self.policy.approval_timeout_seconds
        hold = min(MAX_HOLD_SECONDS, waits + 2 * 3600)
        while True:
            out: LayeredReserveOutcome = await self._call(
                "reserve_spend",
                ReserveLayers(
                    purchase_id=purchase_id,
                    amount=amount,
                    layers=self.layers,
                    principal_id=self.principal_id,
                    override_approval_id=override,
                    hold_seconds=hold,
                ),
                LayeredReserveOutcome,
                f"reserve {amount} under every limit",
            )
            if out.ok:
                self.reserved_until = out.expires_at
                # layers with nothing to enforce were not reserved: commit and release skip them
                self.layers = [layer for layer in self.layers if layer.ledger_id not in out.skipped]
                self.undo.append(
                    ("release_spend", ReleaseLayers(purchase_id=purchase_id, layers=self.layers))
                )
                return
            refused = out.refused_by
            if refused is None or refused.kind != "monthly" or override is not None:
                code = out.code if out.code in _HARD_REFUSALS else ErrorCode.BUDGET_EXCEEDED
                raise Stop(code, _HARD_REFUSALS.get(code, "{amount} does not fit the budget {ledger}").format(
                    amount=amount, ledger=refused.ledger_id if refused else ""
                ))  # fmt: skip
            o = out.outcome
            details = {"amount": amount.model_dump(), "provider": req.provider}
            if o is not None:
                details |= {
                    "limit": o.limit.model_dump(),
                    "committed": o.committed.model_dump(),
                    "reserved": o.reserved.model_dump(),
                }
            await self._ask(
                "spend_limit",
                f"{amount} at {req.provider} would exceed this month's limit"
                + (f" of {o.limit} ({o.committed} already spent)" if o else ""),
                details,
            )
            override = f"{self.wid}.spend_limit"

    async def _commit_spend(self, resource: Resource | None) -> None:
        charge = resource.charge if resource is not None and resource.charge else self.charge
        charged = charge.amount if charge else Money(amount=0)
        await self._call(
            "commit_spend",
            CommitLayers(purchase_id=self.wid, amount=charged, layers=self.layers),
            None,
            f"commit {charged}",
            **UNDO,
        )
        self.undo = [(k, v) for k, v in self.undo if k != "release_spend"]

    async def _revoke_token(self, token: IssuedToken, why: str) -> None:
        assert self.audit is not None
        await workflow.execute_activity(
            "revoke_payment_token",
            RevokeTokenInput(token_id=token.token_id, idempotency_key=f"{self.wid}:payment-token-revoke"),
            summary=f"revoke the payment token ({why})",
            **UNDO,
        )
        self.undo = [(k, v) for k, v in self.undo if k != "revoke_payment_token"]
        await self.audit.record("payment_token.revoked", reason=why)

    async def _settle(self, ref: ResourceRef, resource: Resource) -> Resource:
        """Follow `needs_information` (ask the human) and `pending` (poll) to a final status."""
        for round_ in range(1, 4):
            if resource.status == "pending":
                try:
                    resource = await workflow.execute_activity(
                        "resource_ready", ref, result_type=Resource, summary="wait for the resource", **POLL
                    )
                except ActivityError as err:
                    raise stop_from(err) from None
            if resource.status != "needs_information":
                break
            decision = await self._ask(
                "information",
                f"{ref.provider} needs more information for {ref.resource_id}",
                {"schema": resource.needs_information_schema or {}, "resource_id": ref.resource_id},
            )
            info = decision.information if decision and decision.information else {}
            resource = await self._call(
                "submit_information",
                SubmitInformationInput(
                    ref=ref, information=info, idempotency_key=f"{self.wid}:information-{round_}"
                ),
                Resource,
                "submit the missing information",
            )
        if resource.status != "complete":
            raise Stop(
                ErrorCode.PROVIDER_ERROR, f"resource ended {resource.status}: {resource.error_message or ''}"
            )
        return resource

    async def _compensate(self) -> None:
        """Undo in reverse order; every step retries until it succeeds.

        A charge is refunded once its resource is removed; a charge for a resource the provider
        cannot undo is kept, and its spend committed (never released), so the ledger always equals
        what Stripe kept."""
        settle = self.charge is not None and self._patched("undo-settles-charge")
        removed = False
        kinds = {kind for kind, _ in self.undo}
        for kind, arg in reversed(self.undo):
            if kind == "revoke_payment_token":
                await self._revoke_token(arg, "compensation")
                self.result.compensations.append("payment token revoked")
            if kind == "remove_resource":
                await workflow.execute_activity(
                    "remove_resource",
                    RemoveInput(**arg.model_dump(), idempotency_key=f"{self.wid}:compensate-remove"),
                    result_type=Resource,
                    summary="compensate: remove the half-created resource",
                    **UNDO,
                )
                removed = True
                self.result.compensations.append("resource removed")
                if self.audit:
                    await self.audit.record(
                        "resource.removed", reason="compensation", resource_id=arg.resource_id
                    )
                if settle:
                    await self._refund()
            elif kind == "release_spend":
                if settle and not removed and self.charge is not None:
                    await self._keep_charge(arg)
                else:
                    await workflow.execute_activity(
                        "release_spend", arg, summary="compensate: release the spend reservation", **UNDO
                    )
                    self.result.compensations.append("reservation released")
        if settle and not removed and "release_spend" not in kinds and self.charge is not None:
            self.result.kept_charge = self.charge  # nothing reserved to commit (cannot happen today)
        self.undo.clear()

    async def _refund(self) -> None:
        """Refund the request's charge at Stripe (one deterministic key per request)."""
        assert self.charge is not None
        await workflow.execute_activity(
            "refund_charge",
            RefundInput(
                payment_intent_id=self.charge.payment_reference,
                idempotency_key=f"{self.wid}:compensate-refund",
                metadata={"qm_workflow_id": self.wid, "qm_request_id": self.req.request_id},
            ),
            summary=f"compensate: refund {self.charge.amount}",
            **UNDO,
        )
        self.result.compensations.append(f"charge of {self.charge.amount} refunded")
        if self.audit:
            await self.audit.record("charge.refunded", amount=self.charge.amount, reason="compensation")

    async def _keep_charge(self, release: ReleaseLayers) -> None:
        """The provider cannot undo the resource: the charge stays, and so does its spend."""
        assert self.charge is not None
        await workflow.execute_activity(
            "commit_spend",
            CommitLayers(purchase_id=self.wid, amount=self.charge.amount, layers=release.layers),
            summary=f"compensate: commit {self.charge.amount} (the provider cannot undo it)",
            **UNDO,
        )
        self.result.kept_charge = self.charge
        self.result.compensations.append(
            f"spend of {self.charge.amount} kept committed: {self.req.provider} cannot undo "
            f"{self.req.service_id} {self.result.resource_id or ''}".rstrip()
        )
        if self.audit:
            await self.audit.record(
                "charge.kept", amount=self.charge.amount, reason="provider cannot undo",
                resource_id=self.result.resource_id,
            )  # fmt: skip
