"""Sessions and the kill switch on Temporal: what the API does for `/v1/sessions` and `/v1/agents`.

Server side only. Humans (authenticated by the API): `open` (then an approval), `revoke`, `freeze`,
`unfreeze`. Agents (verified session + identity tokens): `delegate`. A session's start and an unfreeze
carry this process's authority proof (`quartermaster.crypto.authority`): the workflows refuse them
without it, so only a holder of the server key file can open a session or ask for an unfreeze.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from models.authority import ProofKind, change_of
from models.errors import ErrorCode, QuartermasterError
from models.secret import Secret
from models.session import (
    SESSION_CONTINUE_AS_NEW_EVENTS,
    AgentFreezeRequest,
    AgentStatus,
    AgentUnfreezeRequest,
    CloseSummary,
    DelegationRequest,
    DelegationResult,
    FreezeResult,
    RevokeRequest,
    SessionOpenRequest,
    SessionStart,
    SessionState,
    SignedSessionToken,
    agent_workflow_id,
    session_workflow_id,
)
from quartermaster.crypto.authority import AuthoritySigner
from quartermaster.keys import Keyring
from workflows.search_attributes import QM_AGENT, QM_PRINCIPAL


def session_id_of(token: Secret) -> str:
    """The `sid` claim, read without verification: only to route to the session entity, which then
    verifies the token in the worker."""
    parts = token.reveal().split(".")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        sid = claims["sid"]
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise QuartermasterError(ErrorCode.SESSION_INVALID, "the session token is malformed") from exc
    if not isinstance(sid, str) or not sid.isalnum():
        raise QuartermasterError(ErrorCode.SESSION_INVALID, "the session token is malformed")
    return sid


def _code_of(exc: BaseException) -> tuple[ErrorCode, str]:
    cause = exc.__cause__ if isinstance(exc, WorkflowUpdateFailedError) else exc
    if isinstance(cause, ApplicationError):
        if cause.type is not None and cause.type in ErrorCode.__members__:
            return ErrorCode(cause.type), cause.message
        message = cause.message
        for code in ErrorCode:
            if message.startswith(f"{code}:"):
                return code, message.split(":", 1)[1].strip()
        return ErrorCode.INVALID_REQUEST, message
    return ErrorCode.UNKNOWN_ERROR, type(cause).__name__


class SessionService:
    def __init__(
        self,
        *,
        temporal: Client,
        keyring: Keyring,
        task_queue: str,
        continue_as_new_after_events: int = SESSION_CONTINUE_AS_NEW_EVENTS,
    ) -> None:
        self.temporal = temporal
        self.keyring = keyring
        self.task_queue = task_queue
        #: when the sessions this service opens continue as new (tests lower it)
        self.continue_as_new_after_events = continue_as_new_after_events
        self.authority = AuthoritySigner.from_keyring(keyring)

    # ---- sessions -------------------------------------------------------------------------------
    async def open(
        self,
        *,
        email: str,
        agent: str,
        allowed_services: list[str],
        budget_minor: int,
        currency: str = "usd",
        ttl_seconds: int = 3600,
        max_depth: int = 0,
        allowed_scopes: list[str] | None = None,
        approval_timeout_seconds: int = 86_400,
        trust_domain: str = "quartermaster.local",
    ) -> SessionState:
        """Start a root session; it waits for the principal's `session_open` approval."""
        req = SessionOpenRequest.model_validate(
            {
                "session_id": secrets.token_hex(16),
                "principal_id": self.keyring.principal_id(email),
                "principal_email": email,
                "agent": agent,
                "allowed_services": allowed_services,
                "budget": {"amount": budget_minor, "currency": currency},
                "ttl_seconds": ttl_seconds,
                "max_depth": max_depth,
                "allowed_scopes": allowed_scopes,
                "approval_timeout_seconds": approval_timeout_seconds,
                "trust_domain": trust_domain,
            }
        )
        wid = session_workflow_id(req.session_id)
        start = SessionStart(
            open=req,
            proof=self.authority.sign(ProofKind.SESSION_OPEN, wid, change_of(req)),
            continue_as_new_after_events=self.continue_as_new_after_events,
        )
        handle = await self.temporal.start_workflow(
            "SessionWorkflow",
            start,
            id=wid,
            task_queue=self.task_queue,
            static_summary=f"session for agent {agent}",
        )
        state: SessionState = await handle.query("state", result_type=SessionState)
        return state

    async def show(self, session_id: str) -> SessionState:
        handle = self.temporal.get_workflow_handle(session_workflow_id(session_id))
        try:
            state: SessionState = await handle.query("state", result_type=SessionState)
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise QuartermasterError(ErrorCode.NOT_FOUND, f"no session {session_id}") from None
            raise
        return state

    async def token(self, session_id: str) -> Secret | None:
        """The session's token while it is active (for `qm run --session ID`)."""
        handle = self.temporal.get_workflow_handle(session_workflow_id(session_id))
        signed: SignedSessionToken | None = await handle.query(
            "session_token", result_type=SignedSessionToken
        )
        return signed.token if signed is not None else None

    async def list(
        self, *, email: str | None = None, agent: str | None = None, running: bool = True
    ) -> list[str]:
        query = "WorkflowType = 'SessionWorkflow'"
        if running:
            query += " AND ExecutionStatus = 'Running'"
        if email:
            query += f" AND {QM_PRINCIPAL.name} = '{self.keyring.principal_id(email)}'"
        if agent:
            if not agent.replace("-", "").replace("_", "").replace(".", "").isalnum():
                raise QuartermasterError(ErrorCode.INVALID_REQUEST, "bad agent name")
            query += f" AND {QM_AGENT.name} = '{agent}'"
        return [wf.id.removeprefix("session-") async for wf in self.temporal.list_workflows(query)]

    async def revoke(self, session_id: str, *, by: str | None, reason: str = "revoked") -> CloseSummary:
        """Revoke a session and its descendants; returns when every credential under it is revoked."""
        handle = self.temporal.get_workflow_handle(session_workflow_id(session_id))
        try:
            summary: CloseSummary = await handle.execute_update(
                "revoke", RevokeRequest(reason=reason, by=by), result_type=CloseSummary
            )
        except WorkflowUpdateFailedError as exc:
            raise QuartermasterError(*_code_of(exc)) from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                state = await self.show(session_id)
                return CloseSummary(session_id=session_id, status=state.status)
            raise
        return summary

    async def delegate(self, req: DelegationRequest) -> DelegationResult:
        """Ask the parent session (named by the session token) for a narrower child session."""
        handle = self.temporal.get_workflow_handle(session_workflow_id(session_id_of(req.session_token)))
        try:
            result: DelegationResult = await handle.execute_update(
                "delegate", req, result_type=DelegationResult
            )
        except WorkflowUpdateFailedError as exc:
            raise QuartermasterError(*_code_of(exc)) from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise QuartermasterError(ErrorCode.SESSION_INVALID, "the parent session is closed") from None
            raise
        return result

    # ---- the kill switch ------------------------------------------------------------------------
    async def freeze(self, agent: str, *, email: str, reason: str = "kill switch") -> FreezeResult:
        """Freeze an agent now (starting its entity if needed) and revoke everything it holds."""
        op: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            "AgentWorkflow",
            AgentStatus(agent=agent),
            id=agent_workflow_id(self.keyring.principal_id(email), agent),
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            task_queue=self.task_queue,
            static_summary=f"agent {agent}",
        )
        result: FreezeResult = await self.temporal.execute_update_with_start_workflow(
            "freeze",
            AgentFreezeRequest(principal_id=self.keyring.principal_id(email), reason=reason),
            start_workflow_operation=op,
            result_type=FreezeResult,
        )
        return result

    async def unfreeze(self, agent: str, *, email: str, reason: str = "unfreeze") -> AgentStatus:
        """Ask the principal to approve unfreezing (code delivered to them); returns the status."""
        handle = self.temporal.get_workflow_handle(agent_workflow_id(self.keyring.principal_id(email), agent))
        wid = agent_workflow_id(self.keyring.principal_id(email), agent)
        req = AgentUnfreezeRequest(
            principal_id=self.keyring.principal_id(email), principal_email=email, reason=reason
        )
        req = self.authority.signed(req, ProofKind.AGENT_UNFREEZE, wid)
        try:
            status: AgentStatus = await handle.execute_update("unfreeze", req, result_type=AgentStatus)
        except WorkflowUpdateFailedError as exc:
            raise QuartermasterError(ErrorCode.INVALID_REQUEST, _code_of(exc)[1]) from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise QuartermasterError(ErrorCode.INVALID_REQUEST, "the agent is not frozen") from None
            raise
        return status

    async def agent_status(self, agent: str, *, email: str) -> AgentStatus:
        handle = self.temporal.get_workflow_handle(agent_workflow_id(self.keyring.principal_id(email), agent))
        try:
            status: AgentStatus = await handle.query("status", result_type=AgentStatus)
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return AgentStatus(agent=agent)
            raise
        return status
