"""Spend activities: reserve, commit and release one purchase across its ledger layers, set limits,
and read what was spent. They talk to the ledger entities with update-with-start, so a ledger comes
into being on its first use, and every call is idempotent on the purchase id (activity retries are safe).
Every start and update carries the worker's authority proof (the ledgers refuse anything else); an
override is signed only for the calling workflow's own `spend_limit` approval.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from temporalio import activity
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from models.authority import ProofKind
from models.ledger import (
    OVERRIDABLE_KINDS,
    REFUSAL_CODES,
    VELOCITY_WINDOW,
    CommitLayers,
    CommitSpend,
    LayeredReserveOutcome,
    LedgerLayer,
    LedgerStart,
    LedgerView,
    ReleaseLayers,
    ReleaseSpend,
    ReserveLayers,
    ReserveOutcome,
    ReserveSpend,
    SetLedgerLimit,
    SettleOutcome,
    agent_ledger_id,
    month_of,
    monthly_ledger_id,
    parse_agent_ledger_id,
    parse_monthly_ledger_id,
    velocity_ledger_id,
)
from models.limits import (
    AGENT_KINDS,
    AgentSpend,
    LimitChange,
    LimitsStart,
    PrincipalLimits,
    ProviderSpend,
    SpendSummary,
    SpendSummaryRequest,
    layer_limit,
    limits_workflow_id,
    principal_of,
)
from models.money import Money
from quartermaster.crypto.authority import AuthoritySigner
from workflows.search_attributes import QM_PRINCIPAL, QM_PROVIDER

T = TypeVar("T")
_UPDATE_KINDS = {
    "reserve": ProofKind.LEDGER_RESERVE,
    "commit": ProofKind.LEDGER_COMMIT,
    "release": ProofKind.LEDGER_RELEASE,
    "set_limit": ProofKind.LEDGER_SET_LIMIT,
}
#: the server admits ~10 in-flight updates per workflow and aborts updates racing a continue-as-new:
#: both are "try again shortly", never a verdict on the purchase
_TRANSIENT = frozenset({RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.UNAVAILABLE, RPCStatusCode.ABORTED})
_MAX_TRIES = 200
#: updates one worker process keeps in flight per ledger: under the server's per-workflow limit (10),
#: so callers queue here instead of hammering the server with refused requests
PER_LEDGER_IN_FLIGHT = 8


def _layer_order(layer: LedgerLayer) -> tuple[bool, str]:
    # narrow budgets first (most likely to refuse), then the shared monthly caps; a fixed order
    return (layer.kind == "monthly", layer.ledger_id)


def _caller_workflow_id() -> str | None:
    """The workflow whose activity this is (None when called in-process, e.g. by the API or a test)."""
    return activity.info().workflow_id if activity.in_activity() else None


def signed_at() -> datetime:
    """The Temporal server's time this attempt started, where there is one: start proofs are checked
    against the workflow's start time on the same clock (also under a time-skipping test server)."""
    if activity.in_activity():
        started = activity.info().started_time
        if started.year > 2000:  # a test ActivityEnvironment reports the epoch
            return started
    return datetime.now(UTC)


def _currency_error(expected: str, got: str, where: str) -> ApplicationError:
    return ApplicationError(
        f"CURRENCY_MISMATCH: {where} is in {expected.upper()}, the amount in {got.upper()}",
        type="CURRENCY_MISMATCH",
        non_retryable=True,
    )


class SpendActivities:
    """Bound to a Temporal client and the task queue the ledger workflows run on."""

    def __init__(
        self,
        client: Client,
        task_queue: str,
        *,
        authority: AuthoritySigner | None = None,
        providers: Sequence[str] = (),
        ledger_workflow: str = "SpendLedger",
        search_attributes: bool = True,
        continue_as_new_after_events: int | None = None,
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._signer = authority
        self._providers = tuple(providers)
        self._ledger_workflow = ledger_workflow
        self._search_attributes = search_attributes
        self._can_after = continue_as_new_after_events
        self._in_flight: dict[str, tuple[asyncio.Semaphore, int]] = {}

    # ---- plumbing ---------------------------------------------------------------------------------

    @property
    def _authority(self) -> AuthoritySigner:
        """Changes need the authority key; without one these activities can only read."""
        if self._signer is None:
            raise ApplicationError(
                "AUTHORITY_INVALID: spend activities built without the authority key cannot change ledgers",
                type="AUTHORITY_INVALID",
                non_retryable=True,
            )
        return self._signer

    async def _queued(self, ledger_id: str, call: Any) -> Any:
        """Run `call` with at most PER_LEDGER_IN_FLIGHT calls per ledger in flight from this process."""
        sem, users = self._in_flight.get(ledger_id) or (asyncio.Semaphore(PER_LEDGER_IN_FLIGHT), 0)
        self._in_flight[ledger_id] = (sem, users + 1)
        try:
            async with sem:
                return await self._retrying(call)
        finally:
            sem, users = self._in_flight[ledger_id]
            if users == 1:
                del self._in_flight[ledger_id]
            else:
                self._in_flight[ledger_id] = (sem, users - 1)

    async def _retrying(self, call: Any) -> Any:
        """Run `call()` again on transient server refusals, with jittered backoff."""
        delay = 0.01
        for attempt in range(_MAX_TRIES):
            try:
                return await call()
            except RPCError as err:
                if err.status not in _TRANSIENT or attempt == _MAX_TRIES - 1:
                    raise
            await asyncio.sleep(delay * (0.5 + random.random()))  # jitter, not crypto
            delay = min(delay * 1.5, 1.0)
        raise AssertionError("unreachable")

    async def _ledger_start(
        self, layer: LedgerLayer, req: ReserveLayers | None, limits: PrincipalLimits | None = None
    ) -> LedgerStart:
        name = parse_monthly_ledger_id(layer.ledger_id) if layer.kind == "monthly" else None
        agent = parse_agent_ledger_id(layer.ledger_id) if layer.kind != "monthly" else None
        limit, version = layer.limit, 0
        principal = principal_of(layer)
        if principal is not None:
            limits = limits or await self.principal_limits(principal)
            currency = req.amount.currency if req else layer.limit.currency
            limit, version = layer_limit(layer, limits, currency) or layer.limit, limits.version
        month = name.month if name else (agent.month if agent else None)
        start = LedgerStart(
            ledger_id=layer.ledger_id,
            kind=layer.kind,
            limit=limit,
            limit_version=version,
            month=month,
            principal_id=principal or (req.principal_id if req else None),
            principal_email=req.principal_email if req else None,
            provider=name.provider if name else None,
        )
        if self._can_after is not None:
            start.continue_as_new_after_events = self._can_after
        # `state` is never signed: only the ledger's own continue-as-new carries it
        return self._authority.signed(
            start,
            ProofKind.LEDGER_START,
            layer.ledger_id,
            issued_at=signed_at(),
            exclude=frozenset({"state"}),
        )

    async def _ledger_update(
        self,
        layer: LedgerLayer,
        update: str,
        arg: Any,
        result_type: type[T],
        req: ReserveLayers | None = None,
        limits: PrincipalLimits | None = None,
    ) -> T:
        """Send `update` to the layer's ledger, starting the ledger first if it does not exist."""
        start = await self._ledger_start(layer, req, limits)
        arg = self._authority.signed(arg, _UPDATE_KINDS[update], layer.ledger_id)
        attrs = None
        if self._search_attributes and start.principal_id and start.provider:
            attrs = TypedSearchAttributes(
                [
                    SearchAttributePair(QM_PRINCIPAL, start.principal_id),
                    SearchAttributePair(QM_PROVIDER, start.provider),
                ]
            )

        async def call() -> T:
            op: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
                self._ledger_workflow,
                start,
                id=layer.ledger_id,
                task_queue=self._task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                # a finished ledger is never silently restarted empty (its purchase ids would be lost);
                # only a failed one is: a ledger fails only when its start was forged
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                search_attributes=attrs,
                static_summary=f"spend ledger {layer.ledger_id}",
            )
            result: T = await self._client.execute_update_with_start_workflow(
                update, arg, start_workflow_operation=op, result_type=result_type
            )
            return result

        try:
            return await self._queued(layer.ledger_id, call)  # type: ignore[no-any-return]
        except WorkflowAlreadyStartedError as err:
            message = f"LEDGER_CLOSED: ledger {layer.ledger_id} has finished"
            raise ApplicationError(message, type="LEDGER_CLOSED", non_retryable=True) from err
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                raise ApplicationError(
                    f"{cause.type}: {layer.ledger_id}", type=cause.type, non_retryable=cause.non_retryable
                ) from err
            raise

    # ---- limits -----------------------------------------------------------------------------------

    async def principal_limits(self, principal_id: str) -> PrincipalLimits:
        """The principal's limits; the defaults (USD 100 per provider) when none were ever set."""
        handle = self._client.get_workflow_handle(limits_workflow_id(principal_id))
        try:
            limits: PrincipalLimits = await self._retrying(
                lambda: handle.query("limits", result_type=PrincipalLimits)
            )
            return limits
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return PrincipalLimits(principal_id=principal_id)
            raise
        except WorkflowQueryFailedError:
            return PrincipalLimits(principal_id=principal_id)

    @activity.defn(name="set_spend_limit")
    async def set_spend_limit(self, change: LimitChange) -> PrincipalLimits:
        """Apply an approved change to the limits entity, then push it to this month's ledgers.

        Only call this after a human approved it (a `limit_change` or a `spend_limit` approval). Signed
        only when the approval belongs to the calling workflow."""
        caller = _caller_workflow_id()
        if caller is not None and change.approval_id.rpartition(".")[0] != caller:
            raise ApplicationError(
                "AUTHORITY_INVALID: a limit change names another workflow's approval",
                type="AUTHORITY_INVALID",
                non_retryable=True,
            )
        change = self._authority.signed(change, ProofKind.LIMITS_SET, limits_workflow_id(change.principal_id))
        op: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            "PrincipalLimits",
            LimitsStart(principal_id=change.principal_id),
            id=limits_workflow_id(change.principal_id),
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary="spending limits",
        )
        limits: PrincipalLimits = await self._retrying(
            lambda: self._client.execute_update_with_start_workflow(
                "set_limit", change, start_workflow_operation=op, result_type=PrincipalLimits
            )
        )
        if change.kind in AGENT_KINDS:
            # agent ledgers take the new limit with the next purchase (it travels with the reservation)
            return limits
        if change.provider is not None:
            targets = [change.provider]
        else:  # the global limit applies where no per-provider limit wins
            targets = [p for p in {*self._providers} if p not in limits.per_provider]
        now = datetime.now(UTC)
        for provider in sorted(targets):
            limit = limits.for_provider(provider)
            layer = LedgerLayer(
                ledger_id=monthly_ledger_id(change.principal_id, provider, now), limit=limit, kind="monthly"
            )
            await self._ledger_update(
                layer, "set_limit", SetLedgerLimit(limit=limit, version=limits.version), LedgerView
            )
        return limits

    # ---- purchases --------------------------------------------------------------------------------

    @activity.defn(name="reserve_spend")
    async def reserve_spend(self, req: ReserveLayers) -> LayeredReserveOutcome:
        """Reserve on every layer in a fixed order; on a refusal or error, roll back the layers held.

        First the acting agent's per-purchase maximum (no layer is touched when it refuses). Layers whose
        limit comes from the principal's limits carry the current one, which the ledger adopts if newer;
        layers with nothing to enforce are skipped (and named in the outcome)."""
        layers = sorted(req.layers, key=_layer_order)
        for layer in layers:
            if layer.kind == "budget" and layer.limit.currency != req.amount.currency:
                raise _currency_error(layer.limit.currency, req.amount.currency, layer.ledger_id)
        principal = next((p for p in map(principal_of, layers) if p), None) or req.principal_id
        limits = await self.principal_limits(principal) if principal else None
        current: dict[str, Money] = {}
        if limits is not None:
            refused = self._over_transaction_max(req, layers, limits)
            if refused is not None:
                return refused
            for layer in layers:
                if principal_of(layer) is not None:
                    limit = layer_limit(layer, limits, req.amount.currency)
                    if limit is not None:
                        current[layer.ledger_id] = limit
        skipped = [
            layer.ledger_id
            for layer in layers
            if principal_of(layer) is not None and layer.ledger_id not in current
        ]
        layers = [layer for layer in layers if layer.ledger_id not in skipped]
        held: list[tuple[LedgerLayer, datetime | None]] = []
        outcomes: list[ReserveOutcome] = []
        try:
            # an override is valid only for the calling workflow's own approval (in-process callers
            # such as tests name the approval's workflow themselves)
            caller = _caller_workflow_id()
            if req.override_approval_id is not None:
                owner = req.override_approval_id.rpartition(".")[0]
                if caller is not None and owner != caller:
                    raise ApplicationError(
                        "AUTHORITY_INVALID: an override names another workflow's approval",
                        type="AUTHORITY_INVALID",
                        non_retryable=True,
                    )
                caller = owner
            for layer in layers:
                override = req.override_approval_id
                if req.override_ledger_ids is not None and layer.ledger_id not in req.override_ledger_ids:
                    override = None
                if layer.kind not in OVERRIDABLE_KINDS:
                    override = None  # a one-time approval over the cap never lifts an agent's limits
                limit = current.get(layer.ledger_id)
                spend = ReserveSpend(
                    purchase_id=req.purchase_id,
                    amount=req.amount,
                    hold_seconds=req.hold_seconds,
                    override_approval_id=override,
                    requested_by=caller,
                    limit=limit,
                    limit_version=limits.version if limit is not None and limits is not None else None,
                )
                out = await self._ledger_update(layer, "reserve", spend, ReserveOutcome, req, limits)
                outcomes.append(out)
                if out.status not in ("reserved", "already_reserved", "already_committed"):
                    await self._roll_back(req.purchase_id, held)
                    code = REFUSAL_CODES.get(layer.kind) if out.status == "over_limit" else None
                    return LayeredReserveOutcome(
                        ok=False, refused_by=layer, outcome=out, outcomes=outcomes, code=code,
                        skipped=skipped,
                    )  # fmt: skip
                held.append((layer, out.expires_at if out.status != "already_committed" else None))
        except ApplicationError:
            await self._roll_back(req.purchase_id, held)
            raise
        tightest = min(outcomes, key=lambda o: o.remaining.amount) if outcomes else None
        expiries = [o.expires_at for o in outcomes if o.expires_at is not None]
        return LayeredReserveOutcome(
            ok=True,
            refused_by=None,
            outcome=tightest,
            outcomes=outcomes,
            expires_at=min(expiries) if expiries else None,
            skipped=skipped,
        )

    @staticmethod
    def _over_transaction_max(
        req: ReserveLayers, layers: list[LedgerLayer], limits: PrincipalLimits
    ) -> LayeredReserveOutcome | None:
        """A refusal when the purchase is above the per-purchase maximum of any agent the agent layers
        name (the acting agent and its delegators); a purchase without them (a human's own) has none."""
        names = (parse_agent_ledger_id(layer.ledger_id) for layer in layers if layer.kind == "agent_monthly")
        for agent in dict.fromkeys(a.agent for a in names if a):
            cap = limits.for_agent(agent).per_transaction
            if cap is None:
                continue
            if cap.currency != req.amount.currency:
                raise _currency_error(
                    cap.currency, req.amount.currency, f"the per-purchase maximum of {agent}"
                )
            if req.amount.amount > cap.amount:
                return LayeredReserveOutcome(
                    ok=False, refused_by=None, outcome=None, code="TRANSACTION_LIMIT_EXCEEDED"
                )
        return None

    async def _roll_back(self, purchase_id: str, held: list[tuple[LedgerLayer, datetime | None]]) -> None:
        # forget rather than tombstone, so the same purchase id may retry (e.g. after an approval);
        # only the reservation made here, so a replayed roll-back cannot drop a later one
        for layer, until in reversed(held):
            if until is None:
                continue  # committed: nothing to give back
            release = ReleaseSpend(purchase_id=purchase_id, forget=True, held_until=until)
            await self._settle(layer, "release", release)

    async def _settle(
        self, layer: LedgerLayer, update: str, arg: CommitSpend | ReleaseSpend
    ) -> SettleOutcome:
        """Commit or release on an existing ledger (never starts one: there is nothing to settle)."""
        arg = self._authority.signed(arg, _UPDATE_KINDS[update], layer.ledger_id)
        handle = self._client.get_workflow_handle(layer.ledger_id)
        try:
            out: SettleOutcome = await self._queued(
                layer.ledger_id, lambda: handle.execute_update(update, arg, result_type=SettleOutcome)
            )
            return out
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            if update == "release":
                return SettleOutcome(
                    status="not_reserved", limit=layer.limit, committed=layer.limit, reserved=layer.limit,
                    remaining=layer.limit,
                )  # fmt: skip
            raise ApplicationError(
                f"RESERVATION_NOT_FOUND: no open ledger {layer.ledger_id}",
                type="RESERVATION_NOT_FOUND",
                non_retryable=True,
            ) from err
        except WorkflowUpdateFailedError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError):
                raise ApplicationError(
                    f"{cause.type}: {layer.ledger_id}", type=cause.type, non_retryable=cause.non_retryable
                ) from err
            raise

    @activity.defn(name="commit_spend")
    async def commit_spend(self, req: CommitLayers) -> None:
        """Commit the charged amount (≤ the reservation) on every layer."""
        for layer in sorted(req.layers, key=_layer_order):
            await self._settle(layer, "commit", CommitSpend(purchase_id=req.purchase_id, amount=req.amount))

    @activity.defn(name="release_spend")
    async def release_spend(self, req: ReleaseLayers) -> None:
        """Release the purchase on every layer; the purchase id is settled and cannot reserve again."""
        for layer in sorted(req.layers, key=_layer_order):
            await self._settle(layer, "release", ReleaseSpend(purchase_id=req.purchase_id))

    # ---- reading ----------------------------------------------------------------------------------

    async def ledger_view(self, ledger_id: str) -> LedgerView | None:
        """A ledger's view (running or finished), or None if it never existed."""
        handle = self._client.get_workflow_handle(ledger_id)
        try:
            view: LedgerView = await self._retrying(lambda: handle.query("view", result_type=LedgerView))
            return view
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise

    @activity.defn(name="spend_view")
    async def spend_view(self, req: SpendSummaryRequest) -> SpendSummary:
        """Limit, committed, reserved and remaining per provider for one month (default: this one)."""
        month = req.month or month_of(datetime.now(UTC))
        limits = await self.principal_limits(req.principal_id)
        providers = {*self._providers, *req.providers, *limits.per_provider}
        prefix = f"ledger-{req.principal_id}-"
        try:
            query = f'WorkflowId STARTS_WITH "{prefix}" AND WorkflowType = "{self._ledger_workflow}"'
            async for wf in self._client.list_workflows(query):
                name = parse_monthly_ledger_id(wf.id)
                if name is not None and name.month == month:
                    providers.add(name.provider)
        except RPCError:
            pass  # visibility is best effort; configured providers are listed anyway
        rows = []
        for provider in sorted(providers):
            ledger_id = f"{prefix}{provider}-{month}"
            limit = limits.for_provider(provider)
            view = await self.ledger_view(ledger_id) or LedgerView(
                ledger_id=ledger_id,
                kind="monthly",
                month=month,
                limit=limit,
                effective_limit=limit,
                committed=Money(amount=0, currency=limit.currency),
                reserved=Money(amount=0, currency=limit.currency),
                remaining=limit,
            )
            source = limits.source_for(provider)
            rows.append(ProviderSpend(provider=provider, limit_source=source, ledger=view))
        agents = await self._agent_rows(req.principal_id, month, limits)
        return SpendSummary(
            principal_id=req.principal_id, month=month, limits=limits, providers=rows, agents=agents
        )

    async def _agent_rows(self, principal_id: str, month: str, limits: PrincipalLimits) -> list[AgentSpend]:
        """Every agent with its own limits or a ledger this month: its layers, spend and last hour."""
        names = set(limits.per_agent)
        try:
            prefixes = (f"agent-ledger-{principal_id}-", f"velocity-{principal_id}-")
            query = " OR ".join(f'WorkflowId STARTS_WITH "{p}"' for p in prefixes)
            async for wf in self._client.list_workflows(
                f'({query}) AND WorkflowType = "{self._ledger_workflow}"'
            ):
                name = parse_agent_ledger_id(wf.id)
                if name is not None and name.principal_id == principal_id and name.month in (None, month):
                    names.add(name.agent)
        except RPCError:
            pass  # visibility is best effort; agents with their own limits are listed anyway
        when = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
        since = datetime.now(UTC) - VELOCITY_WINDOW
        rows = []
        for agent in sorted(names):
            velocity = await self.ledger_view(velocity_ledger_id(principal_id, agent))
            ledger = await self.ledger_view(agent_ledger_id(principal_id, agent, when))
            own = limits.for_agent(agent)
            remaining = own.monthly
            if own.monthly is not None and ledger is not None:
                used = ledger.committed.amount + ledger.reserved.amount
                remaining = Money(amount=max(own.monthly.amount - used, 0), currency=own.monthly.currency)
            rows.append(
                AgentSpend(
                    agent=agent,
                    limits=own,
                    remaining=remaining,
                    monthly_source=limits.agent_source_for(agent, "monthly"),
                    per_transaction_source=limits.agent_source_for(agent, "per_transaction"),
                    velocity_source=limits.agent_source_for(agent, "purchases_per_hour"),
                    ledger=ledger,
                    purchases_last_hour=len(velocity.reservations) + sum(t > since for t in velocity.counted)
                    if velocity
                    else 0,
                )
            )
        return rows
