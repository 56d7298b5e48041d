"""Provisioning on Temporal: what the API does for `/v1/catalog`, `/v1/provisions`, `/v1/approvals` and
`/v1/resources`. Server side only (it holds the Temporal client and the keyring).

The API scopes request ids to the principal (`provision-<principal id>-<request id>`) and checks who
owns what; this layer starts, queries and updates the workflows.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.catalog import make_quote
from models.api import ResourceInfo
from models.approval import APPROVALS_PAGE_MAX, ApprovalDecision, ApprovalRequest, DecisionOutcome
from models.authority import ProofKind
from models.catalog import Catalog
from models.errors import ErrorCode, QuartermasterError
from models.limits import LimitChangeRequest, LimitKind
from models.link import LinkRequest, LinkResult, LinkView, link_workflow_id
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
from providers.store.approvals import ApprovalPage, InvalidCursorError
from providers.store.interfaces import PendingApprovalStore
from quartermaster.config import Settings
from quartermaster.crypto.authority import AuthoritySigner, sign_decision, sign_human_actor
from quartermaster.keys import Keyring, load_keyring
from quartermaster.orchestration.watch import WaitingWatch
from quartermaster.temporal import connect
from workflows.search_attributes import (
    QM_AGENT,
    QM_PRINCIPAL,
    QM_PROVIDER,
    QM_SERVICE,
    QM_SESSION,
    QM_STATE,
    State,
)

CLOSED_OK = WorkflowExecutionStatus.COMPLETED
#: ids that may be put in a visibility query
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,120}$")
#: ~5 s of retries for a decision that arrives before its approval is open
UNKNOWN_APPROVAL_RETRIES = 25


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


def _session_of(req: ProvisionRequest) -> str | None:
    """The session a request runs under (the `sid` of its session token), for ownership checks."""
    if req.actor.session_token is None:
        return None
    from quartermaster.orchestration.sessions import session_id_of

    try:
        return session_id_of(req.actor.session_token)
    except QuartermasterError:
        return None


#: a provisioning waits for at most this many human gates in a row (terms or OAuth consent, payment
#: method, purchase, spend limit, three `information` rounds)
MAX_GATES_PER_REQUEST = 7
#: every activity call, poll and compensation of one request fits easily in this
PROVISION_WORK = timedelta(hours=12)
#: remove and rotate wait for no human: calls and their retries only
RESOURCE_ACTION_TIMEOUT = timedelta(hours=1)


def provision_execution_timeout(approval_timeout_seconds: int) -> timedelta:
    """The longest a provisioning can legitimately take: every gate timing out in turn, plus the
    calls. Beyond it Temporal ends the run (so this is generous: a timed-out run compensates nothing)."""
    return MAX_GATES_PER_REQUEST * timedelta(seconds=approval_timeout_seconds) + PROVISION_WORK


def workflow_id_for(request_id: str, principal_id: str | None = None) -> str:
    """`provision-<principal id>-<request id>` for the API (request ids are the principal's own
    idempotency keys); `provision-<request id>` for server-side callers that pick unique ids."""
    return f"provision-{principal_id}-{request_id}" if principal_id else f"provision-{request_id}"


def fingerprint(req: ProvisionRequest) -> str:
    """What makes two submissions "the same request" (Stripe's idempotency rule): every parameter but
    the caller's tokens."""
    data = req.model_dump(mode="json", exclude={"actor": {"session_token", "identity_token", "proof"}})
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class RequestOwner:
    """Who a provisioning workflow belongs to, from its search attributes and memo."""

    workflow_id: str
    principal_id: str | None
    session_id: str | None
    fingerprint: str | None


def request_details(req: ProvisionRequest) -> str:
    """The Temporal UI's details of a request (Markdown; no email, no secret): what it is, and where
    its outcome shows (rejected, denied and undone requests also end as a "completed" run)."""
    session = _session_of(req)
    return "\n".join(
        [
            f"**request** `{req.request_id}`: provision `{req.service_id}` named `{req.name}`",
            f"**agent** `{req.actor.agent}`" + (f" under session `{session}`" if session else " (the human)"),
            f"**at most** {req.max_price} now" if req.max_price is not None else "**price** as quoted",
            "**outcome**: the current details (`COMPLETED`, `REJECTED: CODE: reason` or"
            " `UNDONE: CODE: reason; undone: ...`), the memo's `outcome` and `error_code`, and `QmState`"
            " (`COMPLETED`, `FAILED` = rejected, nothing moved, `COMPENSATED` = undone)",
        ]
    )


class Orchestrator:
    def __init__(
        self,
        *,
        temporal: Client,
        settings: Settings,
        keyring: Keyring,
        registry: ProviderRegistry,
        pending: PendingApprovalStore | None = None,
    ) -> None:
        self.temporal = temporal
        self.settings = settings
        self.keyring = keyring
        self.registry = registry
        #: the pending-approvals read model; None: the visibility scan of older releases
        self.pending = pending
        #: one look in the read model per tick for every request this process follows
        self.watch = WaitingWatch(pending) if pending is not None else None

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
    async def submit(
        self, req: ProvisionRequest, *, prevalidate: bool = True, principal_id: str | None = None
    ) -> WorkflowHandle[Any, Any]:
        """Start (or find) the request's workflow. The same request id never starts a second one; with
        `principal_id` (the API), a reuse with other parameters is refused with IDEMPOTENCY_CONFLICT."""
        handle, existing = await self.start(req, prevalidate=prevalidate, principal_id=principal_id)
        if principal_id is not None:
            self.check_reuse(req, existing)
        return handle

    async def start(
        self, req: ProvisionRequest, *, prevalidate: bool = True, principal_id: str | None = None
    ) -> tuple[WorkflowHandle[Any, Any], RequestOwner | None]:
        """Start the request's workflow; returns its handle and, when the id was already taken (running
        or closed: Temporal refuses the start), who the existing workflow belongs to (one describe,
        only then, and only for the API's `principal_id`). None: this call started it, for this
        principal and session.

        An actor without a session is the authenticated human's own request (only the API calls this,
        after verifying their login): it gets this process's authority proof, which the worker checks."""
        req = req.model_copy(update={"actor": self._human_signed(req.actor, req.request_id, req.service_id)})
        if prevalidate:
            await self.quote(req.service_id, req.configuration, req.max_price)
        wid = workflow_id_for(req.request_id, principal_id)
        attrs = TypedSearchAttributes(
            [
                SearchAttributePair(QM_STATE, State.RUNNING),
                SearchAttributePair(QM_PROVIDER, req.provider),
                SearchAttributePair(QM_SERVICE, req.service_id),
                SearchAttributePair(QM_AGENT, req.actor.agent),
                SearchAttributePair(QM_PRINCIPAL, self.keyring.principal_id(str(req.actor.principal_email))),
            ]
        )
        if session_id := _session_of(req):
            attrs = TypedSearchAttributes(
                [*attrs.search_attributes, SearchAttributePair(QM_SESSION, session_id)]
            )
        try:
            handle: WorkflowHandle[Any, Any] = await self.temporal.start_workflow(
                "ProvisionWorkflow",
                req,
                id=wid,
                task_queue=self.settings.task_queue,
                # a running or closed workflow with this id refuses the start: that is how a reuse is
                # noticed, without describing first
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                search_attributes=attrs,
                memo={"fingerprint": fingerprint(req)},
                static_summary=f"provision {req.service_id} '{req.name}' for agent {req.actor.agent}",
                static_details=request_details(req),
                execution_timeout=provision_execution_timeout(self.settings.approval_timeout_seconds),
            )
        except WorkflowAlreadyStartedError:
            if principal_id is None:  # server-side callers pick unique ids: nothing to check
                return self.temporal.get_workflow_handle(wid), None
            # not describable (a moment before it is visible): owned by no one, so the API refuses it
            taken = await self.owner(wid) or RequestOwner(
                wid, principal_id=None, session_id=None, fingerprint=None
            )
            return self.temporal.get_workflow_handle(wid), taken
        return handle, None

    def check_reuse(self, req: ProvisionRequest, existing: RequestOwner | None) -> None:
        """IDEMPOTENCY_CONFLICT when the existing workflow of this request id has other parameters."""
        if existing is not None and existing.fingerprint not in (None, fingerprint(req)):
            raise QuartermasterError(
                ErrorCode.IDEMPOTENCY_CONFLICT,
                f"request id {req.request_id} was already used with other parameters",
            )

    async def owner(self, workflow_id: str) -> RequestOwner | None:
        """The principal and session a workflow was started for, or None when there is none."""
        try:
            desc = await self.temporal.get_workflow_handle(workflow_id).describe()
        except RPCError:
            return None
        attrs = desc.typed_search_attributes
        memo = await desc.memo()
        fp = memo.get("fingerprint")
        return RequestOwner(
            workflow_id=workflow_id,
            principal_id=attrs.get(QM_PRINCIPAL),
            session_id=attrs.get(QM_SESSION),
            fingerprint=fp if isinstance(fp, str) else None,
        )

    async def status(
        self, request_id: str, principal_id: str | None = None
    ) -> ProvisionResult | Waiting | ProvisionStatus:
        """The result if finished, what it waits for if a human must act, else the current step."""
        handle = self.temporal.get_workflow_handle(workflow_id_for(request_id, principal_id))
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

    async def wait(
        self, request_id: str, timeout: float, principal_id: str | None = None
    ) -> ProvisionResult | Waiting | ProvisionStatus:
        """Until finished, waiting for a human, or `timeout` seconds passed.

        With the read model: one long poll for the result (the server answers when the workflow
        closes), and the process's `WaitingWatch`, which looks in the store every quarter second for
        an open approval of every request it follows at once; Temporal is asked for the status
        (describe + a query the worker answers) only to return it. Without it: describe + query
        every quarter second."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self.pending is None or timeout <= 0:
            while True:
                st = await self.status(request_id, principal_id)
                if isinstance(st, ProvisionResult | Waiting) or loop.time() >= deadline:
                    return st
                await asyncio.sleep(0.25)
        assert self.watch is not None
        wid = workflow_id_for(request_id, principal_id)
        handle = self.temporal.get_workflow_handle(wid, result_type=ProvisionResult)
        result = asyncio.ensure_future(handle.result())
        blocked = asyncio.ensure_future(self.watch.until_waiting(wid))
        try:
            await asyncio.wait(
                {result, blocked}, timeout=max(deadline - loop.time(), 0), return_when=asyncio.FIRST_COMPLETED
            )
            if result.done() and result.exception() is None:
                done: ProvisionResult = result.result()
                return done
            if blocked.done():
                blocked.result()  # a store failure is the caller's error, as before
        finally:
            result.cancel()
            blocked.cancel()
        return await self.status(request_id, principal_id)  # waiting, still running, or it failed

    # -- approvals --------------------------------------------------------------------------------
    async def approvals_page(
        self, principal_id: str, *, cursor: str | None = None, limit: int = 100
    ) -> ApprovalPage:
        """One page of the principal's pending approvals, from the store's read model."""
        if self.pending is None:
            return ApprovalPage(items=await self._scan_approvals(principal_id), next_cursor=None)
        try:
            return await self.pending.pending(principal_id, cursor=cursor, limit=limit)
        except InvalidCursorError:
            raise QuartermasterError(ErrorCode.INVALID_REQUEST, "malformed cursor") from None

    async def approvals(
        self, email: str | None = None, *, principal_id: str | None = None
    ) -> list[ApprovalRequest]:
        """Every pending approval of a principal (every page of the read model)."""
        pid = principal_id or (self.keyring.principal_id(email) if email else None)
        if self.pending is None or pid is None:
            return await self._scan_approvals(pid)
        out: list[ApprovalRequest] = []
        cursor: str | None = None
        while True:
            page = await self.approvals_page(pid, cursor=cursor, limit=APPROVALS_PAGE_MAX)
            out += page.items
            if page.next_cursor is None:
                return out
            cursor = page.next_cursor

    async def _scan_approvals(self, pid: str | None) -> list[ApprovalRequest]:
        """Older releases: one visibility query, the list in each workflow's memo (7 s at 10,000)."""
        # this deployment's workflows only: a namespace may hold others' (other keys, other task queues)
        query = f"{QM_STATE.name} = '{State.AWAITING_APPROVAL}' AND TaskQueue = '{self.settings.task_queue}'"
        if pid:
            query += f" AND {QM_PRINCIPAL.name} = '{pid}'"
        out: list[ApprovalRequest] = []
        async for wf in self.temporal.list_workflows(query):
            memo = await wf.memo()
            out += [ApprovalRequest.model_validate(a) for a in memo.get("pending_approvals", [])]
        return out

    async def decide(self, decision: ApprovalDecision, *, caller: str | None = None) -> DecisionOutcome:
        """Send a human's decision; the workflow checks the one-time code and answers.

        `caller` is the authenticated human (the API passes their id; agents never get here): the
        decision is signed for it, and wrong codes are counted per caller."""
        wid, sep, _kind = decision.approval_id.rpartition(".")
        if not sep or not wid:
            raise QuartermasterError(ErrorCode.INVALID_REQUEST, "malformed approval id")
        decision = sign_decision(self.keyring, decision, caller=caller or decision.caller or "local")
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
    async def resources(
        self, email: str | None = None, *, principal_id: str | None = None, sessions: set[str] | None = None
    ) -> list[ResourceInfo]:
        """Live resources (of one principal; with `sessions`, only those provisioned under them)."""
        query = (
            f"WorkflowType = 'ProvisionWorkflow' AND {QM_STATE.name} = '{State.COMPLETED}'"
            f" AND TaskQueue = '{self.settings.task_queue}'"
        )
        pid = principal_id or (self.keyring.principal_id(email) if email else None)
        if pid:
            query += f" AND {QM_PRINCIPAL.name} = '{pid}'"
        out = []
        async for wf in self.temporal.list_workflows(query):
            if sessions is not None and wf.typed_search_attributes.get(QM_SESSION) not in sessions:
                continue
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

    async def _provisioned(self, resource_id: str) -> str | None:
        """The id of the completed provisioning that made `resource_id`. Visibility lags a workflow's
        completion by a moment, so an id that looks real is looked up again for up to ~2 s."""
        if not _SAFE_ID.match(resource_id):
            return None
        query = f"WorkflowType = 'ProvisionWorkflow' AND QmResource = '{resource_id}'"
        for attempt in range(8 if resource_id.startswith("res_") else 1):
            async for wf in self.temporal.list_workflows(query):
                if wf.status == CLOSED_OK:
                    return wf.id
            if attempt < 7:
                await asyncio.sleep(0.25)
        return None

    async def resource_owner(self, resource_id: str) -> RequestOwner | None:
        """Who the resource's provisioning belongs to (None when there is no such resource)."""
        wid = await self._provisioned(resource_id)
        return await self.owner(wid) if wid else None

    async def _provision_of(self, resource_id: str) -> ProvisionResult:
        wid = await self._provisioned(resource_id)
        if wid is not None:
            res: ProvisionResult = await self.temporal.get_workflow_handle(
                wid, result_type=ProvisionResult
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

    async def request_limit_change(
        self,
        *,
        email: str,
        limit: Money | None,
        provider: str | None = None,
        kind: LimitKind = "monthly",
        agent: str | None = None,
        purchases_per_hour: int | None = None,
    ) -> tuple[str, str]:
        """Start a limit change for an authenticated human; returns (workflow id, approval id). The
        start carries this process's proof that the principal id and the email belong together."""
        principal_id = self.keyring.principal_id(email)
        wid = f"limit-change-{principal_id}-{uuid.uuid4().hex[:12]}"
        req = LimitChangeRequest(
            principal_id=principal_id,
            principal_email=email,
            provider=provider,
            limit=limit,
            kind=kind,
            agent=agent,
            purchases_per_hour=purchases_per_hour,
            approval_timeout_seconds=self.settings.approval_timeout_seconds,
        )
        req = AuthoritySigner.from_keyring(self.keyring).signed(req, ProofKind.LIMIT_CHANGE_REQUEST, wid)
        await self.temporal.start_workflow(
            "LimitChange",
            req,
            id=wid,
            task_queue=self.settings.task_queue,
            static_summary=f"limit change: {req.scope()} to {req.value()}",
        )
        return wid, f"{wid}.limit_change"

    def _human_signed(self, actor: Actor, request_id: str, service_id: str) -> Actor:
        """A session-less actor (the API's authenticated human) with the proof for this very request;
        an agent's actor (session + identity tokens) is left as it is, for the worker to verify."""
        if actor.session_token is not None or actor.proof is not None:
            return actor
        return sign_human_actor(self.keyring, actor, request_id=request_id, service_id=service_id)

    async def remove(self, resource_id: str, actor: Actor) -> ResourceActionResult:
        """Remove a resource. A session-less actor (the API's authenticated human) gets this process's
        proof for this very removal."""
        res = await self._provision_of(resource_id)
        actor = self._human_signed(actor, resource_id, res.service_id)
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
            execution_timeout=RESOURCE_ACTION_TIMEOUT,
        )
        return result

    async def rotate(self, resource_id: str, actor: Actor, request_id: str) -> ResourceActionResult:
        """Rotate a resource's credential (a session-less actor is signed as in `remove`)."""
        res = await self._provision_of(resource_id)
        actor = self._human_signed(actor, request_id, res.service_id)
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
            execution_timeout=RESOURCE_ACTION_TIMEOUT,
        )
        return result

    async def link(self, *, email: str, provider: str) -> str:
        """Start (or join) linking the human's existing account at `provider`; returns the workflow id.
        Only the API calls this, after verifying the human's login: the actor carries its proof."""
        if provider not in self.settings.providers:
            raise QuartermasterError(ErrorCode.UNKNOWN_PROVIDER, f"no provider named {provider!r}")
        principal_id = self.keyring.principal_id(email)
        wid = link_workflow_id(principal_id, provider)
        actor = sign_human_actor(
            self.keyring, Actor(principal_email=email, agent="human", kind="human"),
            request_id=wid, service_id=f"{provider}/account",
        )  # fmt: skip
        try:
            await self.temporal.start_workflow(
                "LinkAccountWorkflow",
                LinkRequest(link_id=wid, provider=provider, actor=actor),
                id=wid,
                task_queue=self.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(QM_STATE, State.RUNNING),
                        SearchAttributePair(QM_PROVIDER, provider),
                        SearchAttributePair(QM_AGENT, "human"),
                        SearchAttributePair(QM_PRINCIPAL, principal_id),
                    ]
                ),
                static_summary=f"link the principal's existing {provider} account (nothing bought)",
                execution_timeout=provision_execution_timeout(self.settings.approval_timeout_seconds),
            )
        except WorkflowAlreadyStartedError:
            pass
        return wid

    async def link_view(self, *, principal_id: str, provider: str) -> LinkView:
        """The principal's latest link at `provider` (NOT_FOUND when there is none: another
        principal's link has another workflow id)."""
        handle = self.temporal.get_workflow_handle(link_workflow_id(principal_id, provider))
        try:
            desc = await handle.describe()
            if desc.status == WorkflowExecutionStatus.RUNNING:
                res: LinkResult = await handle.query("link_status", result_type=LinkResult)
                pending = await handle.query("pending_approvals", result_type=list[ApprovalRequest])
                return LinkView(
                    provider=provider,
                    state="waiting_for_human" if pending else "running",
                    approval_id=pending[0].approval_id if pending else None,
                )
            res = await self.temporal.get_workflow_handle(handle.id, result_type=LinkResult).result()
        except (RPCError, WorkflowFailureError):
            raise QuartermasterError(ErrorCode.NOT_FOUND, f"no link at {provider}") from None
        return LinkView(
            provider=provider,
            state=res.outcome,
            link_action=res.link_action,
            already_linked=res.already_linked,
            error={"code": res.error_code or "UNKNOWN_ERROR", "message": res.error_message or ""}
            if res.outcome != "completed"
            else None,
        )
