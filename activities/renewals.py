"""Renewals: charge a further period at the provider, tell the principal, start and cancel the
per-resource renewal workflow, and find which budget layers of a purchase are still open."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.errors import adapter_errors, permanent
from activities.spend import SpendActivities, signed_at
from models.authority import ProofKind
from models.errors import ErrorCode
from models.plan_change import ChangePlanInput, PlanChangedInput
from models.provider import Charge, Resource
from models.renewal import (
    OpenLayers,
    RenewalNotice,
    RenewalStart,
    RenewalTarget,
    RenewalView,
    RenewInput,
    renewal_workflow_id,
    unsigned_fields,
)
from models.secret import Secret
from models.session import SessionState, session_workflow_id
from providers.billing_contract import RenewableProvider
from providers.notifier import Notifier
from providers.registry import ProviderRegistry
from providers.store.interfaces import ConnectionStore
from quartermaster.crypto.authority import AuthoritySigner
from workflows.search_attributes import QM_PRINCIPAL, QM_PROVIDER, QM_RESOURCE, QM_SERVICE

#: `models.session.budget_ledger_id`'s prefix
SESSION_BUDGET_PREFIX = "budget-session-"


class RenewalActivities:
    def __init__(
        self,
        *,
        client: Client,
        task_queue: str,
        registry: ProviderRegistry,
        store: ConnectionStore,
        notifier: Notifier,
        authority: AuthoritySigner | None = None,
    ) -> None:
        self._authority = authority
        self._client = client
        self._task_queue = task_queue
        self._registry = registry
        self._store = store
        self._notifier = notifier

    def _signer(self) -> AuthoritySigner:
        if self._authority is None:
            raise permanent(ErrorCode.AUTHORITY_INVALID, "renewal activities built without the authority key")
        return self._authority

    async def _account(self, principal_id: str, provider: str) -> Secret:
        conn = await self._store.get_connection(principal_id=principal_id, provider=provider)
        if conn is None:
            raise permanent(ErrorCode.NOT_FOUND, f"no connection to {provider} for this principal")
        return conn.credential

    @activity.defn(name="renew_resource")
    async def renew_resource(self, inp: RenewInput) -> Charge:
        """Charge one period at the provider (a decline is `PAYMENT_DECLINED`, not retried)."""
        provider = self._registry.get(inp.provider)
        if not isinstance(provider, RenewableProvider):
            raise permanent(ErrorCode.PROVIDER_ERROR, f"{inp.provider} does not support renewals")
        account = await self._account(inp.principal_id, inp.provider)
        with adapter_errors("renew resource"):
            return await provider.renew_resource(
                account=account,
                resource_id=inp.resource_id,
                period=inp.period,
                due=inp.due,
                payment_token=inp.payment_token,
                idempotency_key=inp.idempotency_key,
                amount=inp.amount,
            )

    @activity.defn(name="change_plan")
    async def change_plan(self, inp: ChangePlanInput) -> Resource:
        """Move the resource to `to_service_id` at the provider (charging an upgrade's difference)."""
        provider = self._registry.get(inp.provider)
        if not isinstance(provider, RenewableProvider):
            raise permanent(
                ErrorCode.PLAN_CHANGE_NOT_ALLOWED, f"{inp.provider} does not support plan changes"
            )
        account = await self._account(inp.principal_id, inp.provider)
        with adapter_errors("change plan"):
            return await provider.change_plan(
                account=account,
                resource_id=inp.resource_id,
                service_id=inp.to_service_id,
                amount=inp.amount.amount if inp.amount else None,
                payment_token=inp.payment_token,
                idempotency_key=inp.idempotency_key,
            )

    @activity.defn(name="renewal_view")
    async def renewal_view(self, target: RenewalTarget) -> RenewalView | None:
        """The resource's running renewal (None: it has none, or it ended)."""
        handle = self._client.get_workflow_handle(renewal_workflow_id(target.provider, target.resource_id))
        try:
            desc = await handle.describe()
            if desc.status != WorkflowExecutionStatus.RUNNING:
                return None
            view: RenewalView = await handle.query("view", result_type=RenewalView)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        return view

    @activity.defn(name="plan_changed")
    async def plan_changed(self, inp: PlanChangedInput) -> None:
        """Tell the renewal its new service, price and credit (it renews at those from now on)."""
        wid = renewal_workflow_id(inp.provider, inp.resource_id)
        change = self._signer().signed(inp.change, ProofKind.RENEWAL_PLAN_CHANGED, wid)
        await self._client.get_workflow_handle(wid).signal("plan_changed", change)

    @activity.defn(name="renewal_notice")
    async def renewal_notice(self, notice: RenewalNotice) -> None:
        """Tell the principal (never the agent); a retry may deliver the same notice id again."""
        await self._notifier.deliver(
            principal_id=notice.principal_id,
            principal_email=notice.principal_email,
            message={
                "type": notice.kind,
                "kind": notice.kind,
                "notice_id": notice.notice_id,
                "summary": notice.summary,
                "resource_id": notice.resource_id,
                "service_id": notice.service_id,
                "amount": notice.amount.model_dump(),
                "due": notice.due.isoformat(),
                "next_attempt": notice.next_attempt.isoformat() if notice.next_attempt else None,
            },
        )

    @activity.defn(name="start_renewal")
    async def start_renewal(self, start: RenewalStart) -> None:
        """Start the resource's renewal workflow once (a second start finds the first), with the
        worker's authority proof: a start without it fails before it charges anything."""
        wid = renewal_workflow_id(start.provider, start.resource_id)
        start = self._signer().signed(
            start, ProofKind.RENEWAL_START, wid, issued_at=signed_at(), exclude=unsigned_fields(start)
        )
        await self._client.start_workflow(
            "RenewalWorkflow",
            start,
            id=wid,
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            static_summary=f"renewals of {start.service_id} {start.resource_id}",
            # the forecast finds a principal's renewals by these (never an email or a secret)
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(QM_PRINCIPAL, start.principal_id),
                    SearchAttributePair(QM_PROVIDER, start.provider),
                    SearchAttributePair(QM_SERVICE, start.service_id),
                    SearchAttributePair(QM_RESOURCE, start.resource_id),
                ]
            ),
        )

    @activity.defn(name="cancel_renewal")
    async def cancel_renewal(self, target: RenewalTarget) -> bool:
        """Stop a resource's future renewals; False when it has none running."""
        handle = self._client.get_workflow_handle(renewal_workflow_id(target.provider, target.resource_id))
        try:
            await handle.signal("cancel", {"reason": target.reason})
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True

    async def _session(self, session_id: str) -> SessionState | None:
        handle = self._client.get_workflow_handle(session_workflow_id(session_id))
        try:
            state: SessionState = await handle.query("state", result_type=SessionState)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        except WorkflowQueryFailedError:
            return None
        return state

    @activity.defn(name="open_layers")
    async def open_layers(self, inp: OpenLayers) -> OpenLayers:
        """The layers that still exist: the book is open or the ledger running and, for a session's
        budget, the session is active too (an expired or revoked session's budget no longer applies to
        renewals)."""
        spend = SpendActivities(self._client, "")  # read-only: no authority key
        kept = []
        for layer in inp.layers:
            principal = None
            if layer.ledger_id.startswith(SESSION_BUDGET_PREFIX):
                session = await self._session(layer.ledger_id.removeprefix(SESSION_BUDGET_PREFIX))
                if session is None or session.status != "active":
                    continue
                principal = session.principal_id
            if await spend.layer_open(layer.ledger_id, principal):
                kept.append(layer)
        return OpenLayers(layers=kept)
