"""`SessionWorkflow`: one entity per session (`session-<session id>`), root or delegated.

A root session waits for the principal's `session_open` approval (a one-time code delivered to the
principal, never the agent); a delegated one starts active with a grant its parent attenuated. Each
holds its grant, its budget ledger id, its children and the provider credentials minted under it,
and an expiry timer. On expiry or revocation it refuses everything at once (status changes inside the
handler, before any await), then revokes its credentials at the providers, cascades to its children
and waits for them, so when a root's `revoke` update returns, the whole tree is closed.

A start carries an authority proof (`workflows.authority`): the API's over a root's open request, the
worker's (signed with the parent's token) over a delegated child's state, and a child counts only as
the child workflow of its parent session. A start without them is `denied` from its first instant and
does nothing, so a Temporal client without the server-side key cannot create an active session, nor
bring a revoked one back with a start of its own (copied from history, proof and all). Revocation needs
no proof: it only takes authority away.

A session's history is bounded: once a run reaches `continue_as_new_after_events` (default
`models.session.SESSION_CONTINUE_AS_NEW_EVENTS`) or Temporal suggests it, the session lets its handlers
in progress finish and continues as new with its state, its token and its live credentials (at most
`MAX_LIVE_CREDENTIALS`; a record past that is refused and the credential revoked). Only that run
believes the state in its input (`authority.from_own_continue_as_new`); children delegated in an
earlier run are closed through the `revoke_sessions` activity, since this run holds no handle for them.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.workflow import ChildWorkflowHandle, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from models.approval import ApprovalDecision, ApprovalRequest, DecisionOutcome
    from models.audit import AuditAction, AuditEvent
    from models.authority import ProofKind, change_of
    from models.errors import ErrorCode
    from models.secret import Secret
    from models.session import (
        LIVE_MEMO,
        MAX_LIVE_CREDENTIALS,
        NEAR_CREDENTIAL_LIMIT,
        AgentSessionRef,
        AgentStatus,
        CloseSummary,
        CredentialRecord,
        DelegationAsk,
        DelegationCheck,
        DelegationCheckResult,
        DelegationRequest,
        DelegationResult,
        RecordCredential,
        RecordOutcome,
        RevokeCredentials,
        RevokeCredentialsResult,
        RevokeRequest,
        RevokeSessions,
        RevokeSessionsResult,
        SessionContinuation,
        SessionGrant,
        SessionStart,
        SessionState,
        SessionStatus,
        SessionTokenRequest,
        SignedSessionToken,
        agent_workflow_id,
        budget_ledger_id,
        session_workflow_id,
    )
    from quartermaster.identity.attenuation import AttenuationError, attenuate
    from workflows import authority
    from workflows.approval_gate import ApprovalGate
    from workflows.search_attributes import QM_AGENT, QM_PRINCIPAL, QM_SESSION, QM_STATE

#: how long after the parent created a delegated child its start is accepted
DELEGATED_START_WINDOW = timedelta(minutes=5)
_QUICK = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=10))


def _refuse(code: ErrorCode, message: str) -> ApplicationError:
    return ApplicationError(message, type=str(code), non_retryable=True)


@workflow.defn(name="SessionWorkflow")
class SessionWorkflow:
    @workflow.init
    def __init__(self, start: SessionStart) -> None:
        self.gate = ApprovalGate()
        self._token: Secret | None = None
        self._children: dict[str, ChildWorkflowHandle[Any, Any]] = {}
        self._close_request: RevokeRequest | None = None
        self._summary: CloseSummary | None = None
        self._in_flight = 0
        self._audits: list[asyncio.Task[None]] = []
        self._open = start.open
        #: what the memo says now (`_publish_live`)
        self._published: dict[str, Any] | None = None
        self._can_after = start.continue_as_new_after_events
        # state in the input is believed only from this workflow's own continue-as-new
        continued = start.continued if authority.from_own_continue_as_new() else None
        self._carried = continued is not None
        self._forged = continued is None and (
            authority.required() and (start.continued is not None or not self._start_proven(start))
        )
        if continued is not None:
            self.state = continued.state
            self._token = continued.token
        elif start.delegated is not None:
            self.state = start.delegated
        elif start.open is not None:
            o = start.open
            wf_id = workflow.info().workflow_id
            self.state = SessionState(
                session_id=o.session_id,
                principal_id=o.principal_id,
                agent=o.agent,
                agent_identity=f"spiffe://{o.trust_domain}/agent/{o.agent}",
                chain=[o.agent],
                chain_identities=[f"spiffe://{o.trust_domain}/agent/{o.agent}"],
                # placeholder until approval: the clock starts when the human approves
                grant=SessionGrant(
                    allowed_services=o.allowed_services,
                    budget=o.budget,
                    expires_at=workflow.now() + timedelta(seconds=o.ttl_seconds),
                    max_depth=o.max_depth,
                    allowed_scopes=o.allowed_scopes,
                ),
                budget_ledger_id=budget_ledger_id(o.session_id),
                status="pending_approval",
                approval_id=f"{wf_id}.session_open",
                created_at=workflow.now(),
            )
        elif start.continued is not None:  # a client's start with a copied state: denied below
            self.state = start.continued.state
        else:
            raise ApplicationError(
                "a session starts from an open request or a delegated state", non_retryable=True
            )
        if self._forged:  # never active, not even for a query before the first task completes
            self.state = self.state.model_copy(
                update={
                    "status": "denied",
                    "closed_reason": "AUTHORITY_INVALID: started without a valid authority proof",
                }
            )

    @staticmethod
    def _start_proven(start: SessionStart) -> bool:
        info = workflow.info()
        if start.open is not None and start.delegated is None:
            kind, sid, change = ProofKind.SESSION_OPEN, start.open.session_id, change_of(start.open)
        elif start.delegated is not None and start.open is None:
            kind, sid = ProofKind.SESSION_DELEGATED, start.delegated.session_id
            change = change_of(start.delegated)
            created = start.delegated.created_at
            parent = info.parent
            # only its parent session starts a child, right after signing it: a client's start of a
            # copied state (e.g. to bring a revoked child back) has no parent and is refused
            if parent is None or parent.workflow_id != session_workflow_id(start.delegated.parent_id or ""):
                return False
            if created is None or info.workflow_start_time - created > DELEGATED_START_WINDOW:
                return False
        else:
            return False
        return session_workflow_id(sid) == info.workflow_id and authority.verify(
            start.proof,
            kind=kind,
            target=info.workflow_id,
            change=change,
            issued_near=info.workflow_start_time,
        )

    # ---- queries -------------------------------------------------------------------------------
    @workflow.query(name="state")
    def query_state(self) -> SessionState:
        return self.state

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[ApprovalRequest]:
        return self.gate.pending()

    @workflow.query(name="session_token")
    def session_token(self) -> SignedSessionToken | None:
        """The bound session token while active (sealed in the payload; useless without the agent's
        identity token)."""
        if self.state.status != "active" or self._token is None:
            return None
        return SignedSessionToken(token=self._token)

    # ---- approvals (the lead's `qm approve` sends these) -----------------------------------------
    @workflow.update(name="submit_decision")
    def submit_decision(self, decision: ApprovalDecision) -> DecisionOutcome:
        return self.gate.decide(decision)

    @workflow.signal(name="decide")
    def decide(self, decision: ApprovalDecision) -> None:
        self.gate.decide(decision)

    # ---- revocation -----------------------------------------------------------------------------
    def _request_close(self, req: RevokeRequest) -> None:
        """Refuse from now on (synchronous: no await between the check and the change)."""
        if self._close_request is None and self.state.status in ("active", "pending_approval"):
            self._close_request = req
            self.state.status = "revoked"
            self.state.closed_reason = req.reason
            self.state.closed_at = workflow.now()
            self._publish_live()

    @workflow.update(name="revoke")
    async def revoke(self, req: RevokeRequest) -> CloseSummary:
        """Revoke this session and its descendants; returns when the whole subtree is closed."""
        self._request_close(req)
        await workflow.wait_condition(lambda: self._summary is not None)
        assert self._summary is not None
        return self._summary

    @workflow.signal(name="request_revoke")
    def request_revoke(self, req: RevokeRequest) -> None:
        """The cascade from a parent session or an agent freeze."""
        self._request_close(req)

    # ---- credentials ----------------------------------------------------------------------------
    @workflow.update(name="record_credential")
    def record_credential(self, rec: RecordCredential) -> RecordOutcome:
        """Remember a credential minted under this session, so expiry or revocation revokes it."""
        if self.state.status != "active":
            raise _refuse(ErrorCode.SESSION_REVOKED, f"the session is {self.state.status}")
        if not any(c.credential_id == rec.credential_id for c in self.state.credentials):
            if self._full():
                raise self._full_refusal()
            self.state.credentials.append(
                CredentialRecord(
                    provider=rec.provider,
                    credential_id=rec.credential_id,
                    account_ref=rec.account_ref,
                    expires_at=rec.expires_at,
                    recorded_at=workflow.now(),
                )
            )
            self._publish_live()
        return RecordOutcome(accepted=True, status=self.state.status)

    @record_credential.validator
    def _validate_record(self, rec: RecordCredential) -> None:
        if rec.session_id != self.state.session_id:
            raise ValueError("the credential names another session")
        if self.state.status != "active":
            raise ValueError(f"{ErrorCode.SESSION_REVOKED}: the session is {self.state.status}")
        if self._full() and not any(c.credential_id == rec.credential_id for c in self.state.credentials):
            raise self._full_refusal()

    def _publish_live(self) -> None:
        """Put the live facts verifiers need into the memo, in this same workflow task, so a describe
        reads exactly what a query would: the status, and whether the live credentials reached
        NEAR_CREDENTIAL_LIMIT (then verifiers count them with a query). Called after every status
        change and every recorded credential (the count rises only there)."""
        if not workflow.patched("session-live-memo"):
            return
        s = self.state
        near = len(s.live_credentials(workflow.now())) >= NEAR_CREDENTIAL_LIMIT
        live = {"status": s.status, "near_credential_limit": near}
        if live != self._published:
            workflow.upsert_memo({LIVE_MEMO: live})
            self._published = live

    def _full(self) -> bool:
        return len(self.state.live_credentials(workflow.now())) >= MAX_LIVE_CREDENTIALS

    @staticmethod
    def _full_refusal() -> ApplicationError:
        return _refuse(
            ErrorCode.CREDENTIAL_LIMIT_EXCEEDED,
            f"the session already holds {MAX_LIVE_CREDENTIALS} live provider credentials",
        )

    # ---- delegation -----------------------------------------------------------------------------
    @workflow.update(name="delegate")
    async def delegate(self, req: DelegationRequest) -> DelegationResult:
        """A narrower child session for `req.to_agent`, asked by the agent holding this session."""
        self._in_flight += 1
        try:
            return await self._delegate(req)
        finally:
            self._in_flight -= 1

    @delegate.validator
    def _validate_delegate(self, req: DelegationRequest) -> None:
        if self.state.status != "active":
            raise ValueError(f"the session is {self.state.status}")

    def _ensure_active(self) -> None:
        status = self.state.status
        if status == "revoked":
            raise _refuse(ErrorCode.SESSION_REVOKED, "the session has been revoked")
        if status == "expired" or self.state.grant.expires_at <= workflow.now():
            raise _refuse(ErrorCode.SESSION_EXPIRED, "the session has expired")
        if status != "active":
            raise _refuse(ErrorCode.SESSION_INVALID, f"the session is {status}")

    async def _delegate(self, req: DelegationRequest) -> DelegationResult:
        parent = self.state
        self._ensure_active()
        try:
            check = await workflow.execute_activity(
                "check_delegation",
                DelegationCheck(
                    session_id=parent.session_id,
                    session_token=req.session_token,
                    identity_token=req.identity_token,
                    to_agent=req.to_agent,
                    budget_ledger_id=parent.budget_ledger_id,
                    budget=parent.grant.budget,
                ),
                result_type=DelegationCheckResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_QUICK,
                summary=f"verify the delegating agent and {req.to_agent}",
            )
        except ActivityError as exc:
            raise _refuse(ErrorCode.UNKNOWN_ERROR, "the delegation could not be verified") from exc
        if not check.ok:
            raise _refuse(ErrorCode(check.code or ErrorCode.SESSION_INVALID), check.reason or "refused")
        self._ensure_active()
        now = workflow.now()
        ask = DelegationAsk(
            allowed_services=req.allowed_services,
            budget=req.budget,
            ttl_seconds=req.ttl_seconds,
            max_depth=req.max_depth,
            allowed_scopes=req.allowed_scopes,
        )
        try:
            grant = attenuate(
                parent.grant,
                parent_depth=parent.depth,
                ask=ask,
                now=now,
                parent_remaining=check.parent_remaining,
            )
        except AttenuationError as exc:
            raise _refuse(exc.code, exc.message) from exc
        child_id = workflow.uuid4().hex
        identity = check.to_agent_identity or ""
        child = SessionState(
            session_id=child_id,
            principal_id=parent.principal_id,
            agent=req.to_agent,
            agent_identity=identity,
            parent_id=parent.session_id,
            depth=parent.depth + 1,
            chain=[*parent.chain, req.to_agent],
            chain_identities=[*parent.chain_identities, identity],
            ancestors=parent.session_ids,
            grant=grant,
            budget_ledger_id=budget_ledger_id(child_id),
            status="active",
            created_at=now,
            activated_at=now,
        )
        signed = await self._sign(child, delegation=True)
        self._ensure_active()
        handle = await workflow.start_child_workflow(
            SessionWorkflow.run,
            SessionStart(
                delegated=child, proof=signed.start_proof, continue_as_new_after_events=self._can_after
            ),
            id=session_workflow_id(child_id),
            parent_close_policy=ParentClosePolicy.ABANDON,
            static_summary=f"session of {req.to_agent}, delegated by {parent.agent}",
        )
        self._children[child_id] = handle
        parent.children.append(child_id)
        return DelegationResult(
            session_id=child_id, session_token=signed.token, grant=grant, chain=child.chain, depth=child.depth
        )

    # ---- lifecycle ------------------------------------------------------------------------------
    async def _sign(self, s: SessionState, *, delegation: bool = False) -> SignedSessionToken:
        signed: SignedSessionToken = await workflow.execute_activity(
            "sign_session_token",
            SessionTokenRequest(
                session_id=s.session_id,
                principal_id=s.principal_id,
                agent_identity=s.agent_identity,
                allowed_services=list(s.grant.allowed_services),
                expires_at=s.grant.expires_at,
                issued_at=workflow.now(),
                chain_identities=s.chain_identities,
                ancestors=s.ancestors,
                depth=s.depth,
                state=s if delegation else None,
            ),
            result_type=SignedSessionToken,
            start_to_close_timeout=timedelta(seconds=30),
            summary="sign the session token",
        )
        return signed

    def _audit(
        self,
        action: AuditAction,
        step: str,
        *,
        outcome: Literal["success", "failure", "refused"] = "success",
        **details: Any,
    ) -> None:
        s = self.state
        event = AuditEvent(
            event_id=f"{workflow.info().workflow_id}:{step}",
            time=workflow.now(),
            action=action,
            outcome=outcome,
            reason=s.closed_reason if action in ("session.revoked", "session.expired") else None,
            principal_id=s.principal_id,
            agent_chain=s.chain,
            session_ids=s.session_ids,
            workflow_id=workflow.info().workflow_id,
            details={k: v for k, v in details.items() if v is not None},
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
                workflow.logger.warning("audit event not recorded", extra={"action": action})

        self._audits.append(asyncio.create_task(send()))

    async def _activate_root(self) -> bool:
        s = self.state
        o = self._open
        assert s.approval_id is not None and o is not None
        ask = asyncio.create_task(
            self.gate.ask(
                approval_id=s.approval_id,
                kind="session_open",
                principal_id=s.principal_id,
                principal_email=str(o.principal_email),
                summary=f"open a session for agent {s.agent}: {', '.join(s.grant.allowed_services)}, "
                f"budget {s.grant.budget}, {o.ttl_seconds // 60} min, delegation depth {o.max_depth}",
                details={
                    "agent": s.agent,
                    "allowed_services": s.grant.allowed_services,
                    "budget": s.grant.budget.model_dump(mode="json"),
                    "ttl_seconds": o.ttl_seconds,
                    "max_depth": o.max_depth,
                    "session_id": s.session_id,
                },
                timeout=timedelta(seconds=o.approval_timeout_seconds),
            )
        )
        await workflow.wait_condition(lambda: ask.done() or self._close_request is not None)
        if not ask.done():
            ask.cancel()
            return False
        result = ask.result()
        if result.status != "approved":
            s.status = "denied"
            s.closed_at = workflow.now()
            s.closed_reason = f"approval {result.status}"
            self._publish_live()
            self._audit(
                "session.opened",
                "opened",
                outcome="refused",
                approval=result.status,
                allowed_services=list(s.grant.allowed_services),
            )
            return False
        now = workflow.now()
        s.grant = s.grant.model_copy(update={"expires_at": now + timedelta(seconds=o.ttl_seconds)})
        s.activated_at = now
        self._token = (await self._sign(s)).token
        if self._close_request is not None:
            return False
        s.status = "active"
        self._publish_live()
        # the grant's services go into the audit details: they are the OCSF event's `privileges`
        self._audit(
            "session.opened",
            "opened",
            approved_by=s.principal_id,
            allowed_services=list(s.grant.allowed_services),
        )
        return True

    async def _register_with_agent(self) -> None:
        try:
            status = await workflow.execute_activity(
                "register_agent_session",
                AgentSessionRef(
                    agent=self.state.agent,
                    session_id=self.state.session_id,
                    principal_id=self.state.principal_id,
                ),
                result_type=AgentStatus,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_QUICK,
                summary=f"register with agent {self.state.agent}",
            )
        except ActivityError:
            return  # enforcement still queries the agent entity on every request
        if status.frozen:
            self._request_close(RevokeRequest(reason="agent frozen", by=status.frozen_by))

    async def _close(self, status: SessionStatus) -> CloseSummary:
        s = self.state
        if status == "expired" and s.status == "active":
            s.status = "expired"
            s.closed_at = workflow.now()
            s.closed_reason = "expired"
            self._publish_live()
        # a delegation past its last check finishes first, so its child is in the cascade
        await workflow.wait_condition(lambda: self._in_flight == 0)
        cascade = RevokeRequest(reason=f"ancestor {s.session_id} {s.status}", by=s.closed_reason)
        for handle in self._children.values():
            try:
                await handle.signal("request_revoke", cascade)
            except Exception:  # the child may have closed already  # noqa: S110
                pass
        revoked, failed = await self._revoke_credentials()
        descendants = tree_revoked = tree_failed = 0
        # children delegated in an earlier run (before a continue-as-new) have no handle in this one
        carried = [c for c in s.children if c not in self._children]
        if carried:
            closed = await self._close_carried_children(carried, cascade)
            descendants += len(carried)
            for carried_summary in closed:
                descendants += carried_summary.descendants_closed
                tree_revoked += carried_summary.credentials_revoked
                tree_failed += carried_summary.credential_failures
        for handle in self._children.values():
            try:
                child_summary: CloseSummary = await handle
                descendants += 1 + child_summary.descendants_closed
                tree_revoked += child_summary.credentials_revoked
                tree_failed += child_summary.credential_failures
            except Exception:
                descendants += 1
        action: AuditAction = "session.expired" if s.status == "expired" else "session.revoked"
        self._audit(action, s.status, credentials_revoked=revoked, credential_failures=failed)
        # the summary counts the whole tree (this session's and every descendant's credentials)
        self._summary = CloseSummary(
            session_id=s.session_id,
            status=s.status,
            credentials_revoked=revoked + tree_revoked,
            credential_failures=failed + tree_failed,
            descendants_closed=descendants,
        )
        return self._summary

    async def _close_carried_children(self, ids: list[str], cascade: RevokeRequest) -> list[CloseSummary]:
        """Revoke children this run holds no handle for; returns once their subtrees are closed."""
        try:
            result = await workflow.execute_activity(
                "revoke_sessions",
                RevokeSessions(session_ids=ids, request=cascade),
                result_type=RevokeSessionsResult,
                start_to_close_timeout=timedelta(minutes=10),
                schedule_to_close_timeout=timedelta(hours=24),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60)),
                summary=f"revoke {len(ids)} child session(s) delegated before a continue-as-new",
            )
        except ActivityError:
            return []
        return list(result.closed)

    async def _revoke_credentials(self) -> tuple[int, int]:
        s = self.state
        pending = [c for c in s.credentials if not c.revoked]
        if not pending:
            return 0, 0
        try:
            result = await workflow.execute_activity(
                "revoke_session_credentials",
                RevokeCredentials(session_id=s.session_id, credentials=pending),
                result_type=RevokeCredentialsResult,
                start_to_close_timeout=timedelta(seconds=60),
                schedule_to_close_timeout=timedelta(hours=24),
                retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=60)),
                summary=f"revoke {len(pending)} provider credential(s)",
            )
        except ActivityError:
            for c in pending:
                c.revoke_error = "revocation_timed_out"
            return 0, len(pending)
        for c in pending:
            if c.credential_id in result.revoked:
                c.revoked = True
            else:
                c.revoke_error = result.failed.get(c.credential_id, "unknown")
        return len(result.revoked), len(result.failed)

    def _set_search_attributes(self) -> None:
        s = self.state
        workflow.upsert_search_attributes(
            [
                QM_SESSION.value_set(s.session_id),
                QM_AGENT.value_set(s.agent),
                QM_PRINCIPAL.value_set(s.principal_id),
                QM_STATE.value_set(s.status.upper()),
            ]
        )

    @workflow.run
    async def run(self, start: SessionStart) -> CloseSummary:
        s = self.state
        self._set_search_attributes()
        if self._forged:
            self._audit("authority.refused", "forged", outcome="refused", reason="AUTHORITY_INVALID")
            await asyncio.gather(*self._audits)
            return CloseSummary(session_id=s.session_id, status=s.status)
        self._publish_live()
        if self._carried:
            pass  # opened (and registered with its agent) in the first run
        elif start.open is not None:
            if not await self._activate_root():
                summary = (
                    await self._close("revoked")
                    if s.status == "revoked"
                    else CloseSummary(session_id=s.session_id, status=s.status)
                )
                self._summary = summary
                return await self._finish(summary)
        else:
            self._audit(
                "session.delegated",
                "delegated",
                parent_id=s.parent_id,
                depth=s.depth,
                allowed_services=list(s.grant.allowed_services),
            )
        if not self._carried:
            self._set_search_attributes()
            await self._register_with_agent()
        workflow.set_current_details(f"active until {s.grant.expires_at.isoformat()}")
        try:
            await workflow.wait_condition(
                lambda: self._close_request is not None or self._continue_due(),
                timeout=max(s.grant.expires_at - workflow.now(), timedelta(seconds=0)),
                timeout_summary="session expiry",
            )
            if self._close_request is None:
                # a long-lived session's history is bounded: after the handlers in progress finish,
                # it goes on in a new run with its state and live credentials (models.session)
                await workflow.wait_condition(lambda: self._close_request is not None or self._drained())
            if self._close_request is None:
                workflow.continue_as_new(
                    SessionStart(
                        continued=SessionContinuation(state=self._carry(), token=self._token),
                        continue_as_new_after_events=self._can_after,
                    )
                )
            summary = await self._close(s.status)
        except TimeoutError:
            summary = await self._close("expired")
        return await self._finish(summary)

    def _continue_due(self) -> bool:
        info = workflow.info()
        return info.get_current_history_length() >= self._can_after or info.is_continue_as_new_suggested()

    def _drained(self) -> bool:
        return (
            self._in_flight == 0 and all(t.done() for t in self._audits) and workflow.all_handlers_finished()
        )

    def _carry(self) -> SessionState:
        """The state the next run starts from: revoked and expired credentials are left behind."""
        return self.state.model_copy(update={"credentials": self.state.live_credentials(workflow.now())})

    async def _finish(self, summary: CloseSummary) -> CloseSummary:
        self._set_search_attributes()
        workflow.set_current_details(f"{self.state.status}: {self.state.closed_reason or ''}")
        try:
            handle = workflow.get_external_workflow_handle(
                agent_workflow_id(self.state.principal_id, self.state.agent)
            )
            await handle.signal(
                "session_closed",
                AgentSessionRef(
                    agent=self.state.agent,
                    session_id=self.state.session_id,
                    principal_id=self.state.principal_id,
                ),
            )
        except Exception:  # noqa: S110 - the agent entity may not exist (never registered)
            pass
        await asyncio.gather(*self._audits)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return summary
