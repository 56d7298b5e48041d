"""The Python client for agents (and the layer under the `qm` CLI).

async with Orchestrator.from_env() as qm:
    wf_id = await qm.submit(request)
    result = await qm.wait(request.request_id, timeout=60)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.catalog import make_quote
from models.approval import ApprovalDecision, ApprovalRequest, DecisionOutcome
from models.catalog import Catalog
from models.errors import ErrorCode, QuartermasterError
from models.money import Money
from models.provisioning import (
    DiscoverInput,
    ProvisionResult,
    ProvisionStatus,
    Quote,
    RemoveRequest,
    ResourceActionResult,
    RotateRequest,
)
from models.request import Actor, ProvisionRequest
from models.secret import Secret
from providers.errors import ProviderError
from providers.registry import ProviderRegistry, UnknownProviderError
from quartermaster.config import Settings
from quartermaster.keys import Keyring, load_keyring
from quartermaster.temporal import connect
from workflows.search_attributes import QM_AGENT, QM_PRINCIPAL, QM_PROVIDER, QM_SERVICE, QM_STATE, State

CLOSED_OK = WorkflowExecutionStatus.COMPLETED
#: ~5 s of retries for a decision that arrives before its approval is open
UNKNOWN_APPROVAL_RETRIES = 25


class ResourceInfo(BaseModel):
    resource_id: str
    service_id: str
    request_id: str
    workflow_id: str
    credential_id: str | None
    credential_names: list[str]
    expires_at: str | None


class Waiting(BaseModel):
    """A request that stopped for a human: the code the agent reports and what was asked."""

    request_id: str
    code: ErrorCode
    approvals: list[ApprovalRequest]


WAITING_CODES = {
    "terms": ErrorCode.TERMS_ACCEPTANCE_REQUIRED,
    "payment_method": ErrorCode.PAYMENT_METHOD_REQUIRED,
    "oauth_consent": ErrorCode.OAUTH_CONSENT_REQUIRED,
    "purchase": ErrorCode.PURCHASE_APPROVAL_REQUIRED,
    "spend_limit": ErrorCode.SPEND_LIMIT_REACHED,
    "information": ErrorCode.INFORMATION_REQUIRED,
}


def actor_from_env(email: str | None = None, agent: str | None = None) -> Actor:
    """The actor from flags or the environment `qm run` prepared (QM_SESSION_TOKEN, QM_IDENTITY_TOKEN)."""
    email = email or os.environ.get("QM_PRINCIPAL_EMAIL")
    agent = agent or os.environ.get("QM_AGENT")
    if not email or not agent:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "name the principal and agent (--email/--agent)")
    session = os.environ.get("QM_SESSION_TOKEN")
    identity = os.environ.get("QM_IDENTITY_TOKEN")
    return Actor(
        principal_email=email,
        agent=agent,
        session_token=Secret(session) if session else None,
        identity_token=Secret(identity) if identity else None,
    )


def workflow_id_for(request_id: str) -> str:
    return f"provision-{request_id}"


class Orchestrator:
    def __init__(
        self, *, temporal: Client, settings: Settings, keyring: Keyring, registry: ProviderRegistry
    ) -> None:
        self.temporal = temporal
        self.settings = settings
        self.keyring = keyring
        self.registry = registry

    @classmethod
    @asynccontextmanager
    async def from_env(cls) -> AsyncIterator[Orchestrator]:
        settings = Settings.from_env()
        keyring = load_keyring(settings.resolved_keys_file, create=False)
        temporal = await connect(settings, keyring)
        yield cls(
            temporal=temporal,
            settings=settings,
            keyring=keyring,
            registry=ProviderRegistry.from_settings(settings),
        )

    # -- discovery --------------------------------------------------------------------------------
    async def catalog(self, provider: str | None = None) -> list[Catalog]:
        names = [provider] if provider else list(self.settings.providers)
        out = []
        for name in names:
            try:
                out.append(await self.registry.get(name).catalog())
            except UnknownProviderError:
                raise QuartermasterError(ErrorCode.UNKNOWN_PROVIDER, f"no provider named {name!r}") from None
            except ProviderError as exc:
                raise QuartermasterError(ErrorCode.PROVIDER_UNAVAILABLE, f"{name}: {exc.code}") from None
        return out

    async def quote(
        self, service_id: str, configuration: dict[str, Any] | None = None, max_price: Money | None = None
    ) -> Quote:
        """Price a service without starting anything."""
        if "/" not in service_id:
            raise QuartermasterError(ErrorCode.INVALID_REQUEST, "a service is named provider/service")
        (catalog,) = await self.catalog(service_id.split("/", 1)[0])
        return make_quote(
            catalog,
            DiscoverInput(service_id=service_id, configuration=configuration or {}, max_price=max_price),
        )

    # -- provisioning -----------------------------------------------------------------------------
    async def submit(self, req: ProvisionRequest, *, prevalidate: bool = True) -> WorkflowHandle[Any, Any]:
        """Start (or find) the request's workflow. The same request id never starts a second one."""
        if prevalidate:
            await self.quote(req.service_id, req.configuration, req.max_price)
        wid = workflow_id_for(req.request_id)
        attrs = TypedSearchAttributes(
            [
                SearchAttributePair(QM_STATE, State.RUNNING),
                SearchAttributePair(QM_PROVIDER, req.provider),
                SearchAttributePair(QM_SERVICE, req.service_id),
                SearchAttributePair(QM_AGENT, req.actor.agent),
                SearchAttributePair(QM_PRINCIPAL, self.keyring.principal_id(str(req.actor.principal_email))),
            ]
        )
        try:
            return await self.temporal.start_workflow(
                "ProvisionWorkflow",
                req,
                id=wid,
                task_queue=self.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=attrs,
                static_summary=f"provision {req.service_id} '{req.name}' for agent {req.actor.agent}",
            )
        except WorkflowAlreadyStartedError:
            return self.temporal.get_workflow_handle(wid)

    async def status(self, request_id: str) -> ProvisionResult | Waiting | ProvisionStatus:
        """The result if finished, what it waits for if a human must act, else the current step."""
        handle = self.temporal.get_workflow_handle(workflow_id_for(request_id))
        try:
            desc = await handle.describe()
        except RPCError:
            raise QuartermasterError(ErrorCode.NOT_FOUND, f"no request {request_id}") from None
        if desc.status == CLOSED_OK:
            result: ProvisionResult = await self.temporal.get_workflow_handle(
                handle.id, result_type=ProvisionResult
            ).result()
            return result
        if desc.status != WorkflowExecutionStatus.RUNNING:
            raise QuartermasterError(
                ErrorCode.UNKNOWN_ERROR,
                f"request {request_id} ended {desc.status.name if desc.status else 'unknown'}",
            )
        st: ProvisionStatus = await handle.query("status", result_type=ProvisionStatus)
        if st.pending_approvals:
            approvals = [ApprovalRequest.model_validate(a) for a in st.pending_approvals]
            return Waiting(request_id=request_id, code=WAITING_CODES[approvals[0].kind], approvals=approvals)
        return st

    async def wait(self, request_id: str, timeout: float) -> ProvisionResult | Waiting | ProvisionStatus:
        """Poll until finished, waiting for a human, or `timeout` seconds passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            st = await self.status(request_id)
            if isinstance(st, ProvisionResult | Waiting) or loop.time() >= deadline:
                return st
            await asyncio.sleep(0.25)

    # -- approvals --------------------------------------------------------------------------------
    async def approvals(self, email: str | None = None) -> list[ApprovalRequest]:
        """Every pending approval, from one visibility query (the list is in each workflow's memo)."""
        query = f"{QM_STATE.name} = '{State.AWAITING_APPROVAL}'"
        if email:
            query += f" AND {QM_PRINCIPAL.name} = '{self.keyring.principal_id(email)}'"
        out: list[ApprovalRequest] = []
        async for wf in self.temporal.list_workflows(query):
            memo = await wf.memo()
            out += [ApprovalRequest.model_validate(a) for a in memo.get("pending_approvals", [])]
        return out

    async def decide(self, decision: ApprovalDecision) -> DecisionOutcome:
        """Send a human's decision; the workflow checks the one-time code and answers."""
        wid, sep, _kind = decision.approval_id.rpartition(".")
        if not sep or not wid:
            raise QuartermasterError(ErrorCode.INVALID_REQUEST, "malformed approval id")
        handle = self.temporal.get_workflow_handle(wid)
        try:
            for _ in range(UNKNOWN_APPROVAL_RETRIES):
                outcome: DecisionOutcome = await handle.execute_update(
                    "submit_decision", decision, result_type=DecisionOutcome
                )
                if outcome.status != "UNKNOWN_APPROVAL":
                    break
                # the code can reach the human a moment before the workflow holds its hash
                await asyncio.sleep(0.2)
        except RPCError as err:
            raise QuartermasterError(
                ErrorCode.NOT_FOUND, f"no open approval {decision.approval_id}: {err.message}"
            ) from None
        return outcome

    # -- resources --------------------------------------------------------------------------------
    async def resources(self, email: str | None = None) -> list[ResourceInfo]:
        query = f"WorkflowType = 'ProvisionWorkflow' AND {QM_STATE.name} = '{State.COMPLETED}'"
        if email:
            query += f" AND {QM_PRINCIPAL.name} = '{self.keyring.principal_id(email)}'"
        out = []
        async for wf in self.temporal.list_workflows(query):
            res: ProvisionResult = await self.temporal.get_workflow_handle(
                wf.id, result_type=ProvisionResult
            ).result()
            if res.resource_id is None or await self._removed(res.resource_id):
                continue
            cred = await self._current_credential(res)
            out.append(
                ResourceInfo(
                    resource_id=res.resource_id,
                    service_id=res.service_id,
                    request_id=res.request_id,
                    workflow_id=wf.id,
                    credential_id=cred[0] if cred else None,
                    credential_names=sorted(cred[1]) if cred else [],
                    expires_at=cred[2] if cred else None,
                )
            )
        return out

    async def _provision_of(self, resource_id: str) -> ProvisionResult:
        query = f"WorkflowType = 'ProvisionWorkflow' AND QmResource = '{resource_id}'"
        async for wf in self.temporal.list_workflows(query):
            if wf.status == CLOSED_OK:
                res: ProvisionResult = await self.temporal.get_workflow_handle(
                    wf.id, result_type=ProvisionResult
                ).result()
                if res.outcome == "completed":
                    return res
        raise QuartermasterError(ErrorCode.NOT_FOUND, f"no resource {resource_id}")

    async def _removed(self, resource_id: str) -> bool:
        handle = self.temporal.get_workflow_handle(f"remove-{resource_id}")
        try:
            desc = await handle.describe()
        except RPCError:
            return False
        if desc.status != CLOSED_OK:
            return False
        res: ResourceActionResult = await self.temporal.get_workflow_handle(
            handle.id, result_type=ResourceActionResult
        ).result()
        return res.outcome == "completed"

    async def _rotations(self, resource_id: str) -> list[ResourceActionResult]:
        query = f"WorkflowType = 'RotateCredentialWorkflow' AND QmResource = '{resource_id}'"
        out = []
        async for wf in self.temporal.list_workflows(query):  # newest first
            if wf.status == CLOSED_OK:
                res: ResourceActionResult = await self.temporal.get_workflow_handle(
                    wf.id, result_type=ResourceActionResult
                ).result()
                if res.outcome == "completed" and res.credential:
                    out.append(res)
        return out

    async def _current_credential(self, res: ProvisionResult) -> tuple[str, dict[str, Secret], str] | None:
        rotations = await self._rotations(res.resource_id or "")
        cred = rotations[0].credential if rotations else res.credential
        if cred is None:
            return None
        return cred.credential_id, cred.env, cred.expires_at.isoformat()

    async def credentials(self, resource_id: str) -> dict[str, Secret]:
        """The resource's current credentials (after rotations), for `qm exec` / `qm env`."""
        res = await self._provision_of(resource_id)
        cred = await self._current_credential(res)
        if cred is None:
            raise QuartermasterError(ErrorCode.NOT_FOUND, f"resource {resource_id} has no credential")
        return cred[1]

    async def remove(self, resource_id: str, actor: Actor) -> ResourceActionResult:
        res = await self._provision_of(resource_id)
        rotations = await self._rotations(resource_id)
        creds = [r.credential.credential_id for r in rotations if r.credential]
        creds += [res.credential.credential_id] if res.credential else []
        req = RemoveRequest(
            resource_id=resource_id, service_id=res.service_id, actor=actor, credential_ids=creds
        )
        result: ResourceActionResult = await self.temporal.execute_workflow(
            "RemoveResourceWorkflow",
            req,
            id=f"remove-{resource_id}",
            task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            result_type=ResourceActionResult,
            static_summary=f"remove {resource_id}",
            execution_timeout=timedelta(hours=1),
        )
        return result

    async def rotate(self, resource_id: str, actor: Actor, request_id: str) -> ResourceActionResult:
        res = await self._provision_of(resource_id)
        rotations = await self._rotations(resource_id)
        current = rotations[0].credential if rotations else res.credential
        req = RotateRequest(
            resource_id=resource_id,
            service_id=res.service_id,
            request_id=request_id,
            actor=actor,
            scopes=current.scopes if current else [],
            credential_ids=[current.credential_id] if current else [],
        )
        result: ResourceActionResult = await self.temporal.execute_workflow(
            "RotateCredentialWorkflow",
            req,
            id=f"rotate-{resource_id}-{request_id}",
            task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            result_type=ResourceActionResult,
            static_summary=f"rotate the credential of {resource_id}",
        )
        return result
