"""No standing privileges: revoke provider credentials minted under a session, revoke sessions for the
kill switch, and register sessions with their agent's entity.

`CredentialRevoker` is the seam to the providers: given (provider, account_ref, credential_id) it
revokes the credential at the provider (RFC 7009: revoking an already inactive token succeeds). The
worker builds `RegistryCredentialRevoker` from `providers.registry.ProviderRegistry` and an
`AccountCredentials` lookup that the provisioning side supplies (account refs -> account credential).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from models.secret import Secret
from models.session import (
    AgentSessionRef,
    AgentStatus,
    CloseSummary,
    RevokeCredentials,
    RevokeCredentialsResult,
    RevokeSessions,
    RevokeSessionsResult,
    agent_workflow_id,
    session_workflow_id,
)
from providers.errors import PermanentProviderError
from providers.store.interfaces import ConnectionStore
from workflows.search_attributes import QM_AGENT, QM_PRINCIPAL


class CredentialRevoker(Protocol):
    async def revoke(self, *, provider: str, account_ref: str, credential_id: str) -> None:
        """Revoke the credential at the provider. Raise RetryableProviderError for transient trouble,
        PermanentProviderError when it can never succeed."""
        ...


class AccountCredentials(Protocol):
    async def account_credential(self, *, provider: str, account_ref: str) -> Secret:
        """The orchestrator's credential for the account `account_ref` at `provider`."""
        ...


class ProviderLookup(Protocol):
    def get(self, name: str) -> _RevokingProvider: ...


class _RevokingProvider(Protocol):
    async def revoke_credential(self, *, account: Secret, credential_id: str) -> None: ...


class RegistryCredentialRevoker:
    """Revoke through the provider adapters (`ProviderRegistry`) with the stored account credential."""

    def __init__(self, *, registry: ProviderLookup, accounts: AccountCredentials) -> None:
        self._registry = registry
        self._accounts = accounts

    async def revoke(self, *, provider: str, account_ref: str, credential_id: str) -> None:
        account = await self._accounts.account_credential(provider=provider, account_ref=account_ref)
        await self._registry.get(provider).revoke_credential(account=account, credential_id=credential_id)


class ConnectionStoreAccounts:
    """Account credentials from the orchestrator's connection store; `account_ref` is the principal id
    (what the provisioning workflow records)."""

    def __init__(self, store: ConnectionStore) -> None:
        self._store = store

    async def account_credential(self, *, provider: str, account_ref: str) -> Secret:
        conn = await self._store.get_connection(principal_id=account_ref, provider=provider)
        if conn is None:
            raise PermanentProviderError(
                "account_not_linked", "no stored account credential for that reference"
            )
        return conn.credential


#: revocations in flight at once per activity. A session holds up to 1,000 credentials: sent all at
#: once, httpx's pool spends quadratic time assigning them to connections, and on a slow machine the
#: batch outran the activity's 60 s start-to-close, so each retry timed out again (found in CI)
REVOKE_CONCURRENCY = 16


class SessionRevocationActivities:
    def __init__(self, *, client: Client, revoker: CredentialRevoker | None) -> None:
        self._client = client
        self._revoker = revoker

    def all(self) -> list[Callable[..., Any]]:
        """Every activity of this class, for the worker."""
        return [self.revoke_session_credentials, self.revoke_sessions, self.register_agent_session]

    @activity.defn(name="revoke_session_credentials")
    async def revoke_session_credentials(self, req: RevokeCredentials) -> RevokeCredentialsResult:
        """Revoke each credential; transient failures retry the activity (revocation is idempotent)."""
        result = RevokeCredentialsResult()
        if self._revoker is None:
            result.failed = {c.credential_id: "no_revoker_configured" for c in req.credentials}
            return result

        gate = asyncio.Semaphore(REVOKE_CONCURRENCY)

        async def one(provider: str, account_ref: str, credential_id: str) -> None:
            assert self._revoker is not None
            try:
                async with gate:
                    await self._revoker.revoke(
                        provider=provider, account_ref=account_ref, credential_id=credential_id
                    )
                result.revoked.append(credential_id)
            except PermanentProviderError as exc:
                if exc.code in ("not_found", "token_not_found", "credential_not_found"):
                    result.revoked.append(credential_id)  # nothing left to revoke
                else:
                    result.failed[credential_id] = exc.code

        await asyncio.gather(*(one(c.provider, c.account_ref, c.credential_id) for c in req.credentials))
        return result

    async def _running_sessions_of(self, agent: str, principal_id: str | None) -> list[str]:
        if principal_id is None or not principal_id.isalnum():
            return []  # never by agent name alone: the same name belongs to other principals too
        query = (
            "WorkflowType = 'SessionWorkflow' AND ExecutionStatus = 'Running'"
            f" AND {QM_AGENT.name} = '{agent}' AND {QM_PRINCIPAL.name} = '{principal_id}'"
        )
        out: list[str] = []
        async for wf in self._client.list_workflows(query):
            out.append(wf.id.removeprefix("session-"))
        return out

    @activity.defn(name="revoke_sessions")
    async def revoke_sessions(self, req: RevokeSessions) -> RevokeSessionsResult:
        """Revoke each session (its update returns once its subtree is closed)."""
        ids = list(dict.fromkeys(req.session_ids))
        if req.agent is not None:
            ids = list(dict.fromkeys([*ids, *await self._running_sessions_of(req.agent, req.principal_id)]))

        async def one(session_id: str) -> CloseSummary | None:
            handle = self._client.get_workflow_handle(session_workflow_id(session_id))
            try:
                summary: CloseSummary = await handle.execute_update(
                    "revoke", req.request, result_type=CloseSummary
                )
                return summary
            except WorkflowUpdateFailedError:
                return None
            except RPCError as exc:
                if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                    return None  # already closed
                raise

        activity.heartbeat(len(ids))
        summaries = await asyncio.gather(*(one(sid) for sid in ids))
        return RevokeSessionsResult(closed=[s for s in summaries if s is not None])

    @activity.defn(name="register_agent_session")
    async def register_agent_session(self, ref: AgentSessionRef) -> AgentStatus:
        """Signal-with-start the agent entity; its answer says whether the agent is frozen."""
        handle = await self._client.start_workflow(
            "AgentWorkflow",
            AgentStatus(agent=ref.agent),
            id=agent_workflow_id(ref.principal_id, ref.agent),
            task_queue=activity.info().task_queue,
            start_signal="register_session",
            start_signal_args=[ref],
            static_summary=f"agent {ref.agent}",
        )
        status: AgentStatus = await handle.query("status", result_type=AgentStatus)
        return status
