"""Spend activities: reserve, commit and release one purchase across its ledger layers, set limits,
and read what was spent. They talk to the ledger entities with update-with-start, so a ledger comes
into being on its first use, and every call is idempotent on the purchase id (activity retries are safe).
Every start and update carries the worker's authority proof (the ledgers refuse anything else); an
override is signed only for the calling workflow's own `spend_limit` approval.

With `books` (the worker's default, `QM_SPEND_BOOKS`), a purchase's layers live in one `SpendBooks`
entity per principal and are reserved, committed and released there in one update each; a layer whose
`SpendLedger` already exists (it was opened before books) keeps its ledger, so no month is counted in
two places. Reads ask the principal's books first, then the layer's ledger.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

from temporalio import activity
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
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
from models.books import (
    BookReserve,
    BooksReserve,
    BooksReserveOutcome,
    BooksSetLimit,
    BooksSettle,
    BooksSettleOutcome,
    BooksStart,
    BooksView,
    books_workflow_id,
)
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


def principal_of_id(ledger_id: str) -> str | None:
    """The principal a layer id names (budget ids name none)."""
    monthly = parse_monthly_ledger_id(ledger_id)
    if monthly is not None:
        return monthly.principal_id
    agent = parse_agent_ledger_id(ledger_id)
    return agent.principal_id if agent is not None else None


def _raise_update_error(err: WorkflowUpdateFailedError, where: str | None = None) -> NoReturn:
    """Raise a refused update as the activity's error: the stable code, and where (or the refusal's own
    message, which names the ledger: the books' refusals). Anything else is raised as it came."""
    cause = err.cause
    if isinstance(cause, ApplicationError):
        message = f"{cause.type}: {where}" if where else cause.message
        raise ApplicationError(message, type=cause.type, non_retryable=cause.non_retryable) from err
    raise err


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
        books: bool = True,
        books_workflow: str = "SpendBooks",
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._signer = authority
        self._providers = tuple(providers)
        self._ledger_workflow = ledger_workflow
        self._search_attributes = search_attributes
        self._can_after = continue_as_new_after_events
        self._in_flight: dict[str, tuple[asyncio.Semaphore, int]] = {}
        self._books = books
        self._books_workflow = books_workflow
        #: ledger id -> has a `SpendLedger` (then the layer stays there); answers never change once
        #: every worker runs with books, so they are kept for the process's life (bounded)
        self._has_ledger: dict[str, bool] = {}

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
        """The layer's ledger start, signed for a `SpendLedger` of that id."""
        start = await self._layer_start(layer, req, limits)
        # `state` is never signed: only the ledger's own continue-as-new carries it
        return self._authority.signed(
            start,
            ProofKind.LEDGER_START,
            layer.ledger_id,
            issued_at=signed_at(),
            exclude=frozenset({"state"}),
        )

    async def _layer_start(
        self, layer: LedgerLayer, req: ReserveLayers | None, limits: PrincipalLimits | None = None
    ) -> LedgerStart:
        """How the layer's ledger or book opens: its kind, month and the principal's current limit."""
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
        return start

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
            _raise_update_error(err, layer.ledger_id)

    # ---- books ----------------------------------------------------------------------------------

    async def _split(
        self, layers: list[LedgerLayer]
    ) -> tuple[str | None, list[LedgerLayer], list[LedgerLayer]]:
        """(principal, the layers kept in its books, the layers kept in their own ledgers). A layer goes
        to the books unless its `SpendLedger` exists; without books, or when no layer names the
        principal (budgets alone), every layer is a ledger."""
        principal = next((p for p in map(principal_of, layers) if p), None)
        if not self._books or principal is None:
            return None, [], list(layers)
        in_books: list[LedgerLayer] = []
        in_ledgers: list[LedgerLayer] = []
        for layer in layers:
            (in_ledgers if await self._ledger_exists(layer.ledger_id) else in_books).append(layer)
        return principal, in_books, in_ledgers

    async def _ledger_exists(self, ledger_id: str) -> bool:
        """Does a real `SpendLedger` hold this layer? One that failed does not: a ledger fails only when
        its start was forged, so a client without the authority key cannot pull a layer out of the books
        by starting one. Any other ledger, running or ended, keeps the layer (an ended one refuses)."""
        known = self._has_ledger.get(ledger_id)
        if known is not None:
            return known
        try:
            desc: WorkflowExecutionDescription = await self._retrying(
                self._client.get_workflow_handle(ledger_id).describe
            )
            exists = (
                desc.workflow_type == self._ledger_workflow and desc.status != WorkflowExecutionStatus.FAILED
            )
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            exists = False
        if len(self._has_ledger) >= 100_000:
            self._has_ledger.clear()  # asking again is only a describe
        self._has_ledger[ledger_id] = exists
        return exists

    async def _books_update(
        self, principal_id: str, update: str, arg: Any, kind: ProofKind, result_type: type[T]
    ) -> T:
        """Send `update` to the principal's books, starting them first if they do not exist."""
        books_id = books_workflow_id(principal_id)
        start = BooksStart(principal_id=principal_id)
        if self._can_after is not None:
            start.continue_as_new_after_events = self._can_after
        start = self._authority.signed(
            start, ProofKind.BOOKS_START, books_id, issued_at=signed_at(), exclude=frozenset({"state"})
        )
        arg = self._authority.signed(arg, kind, books_id)
        attrs = None
        if self._search_attributes:
            attrs = TypedSearchAttributes([SearchAttributePair(QM_PRINCIPAL, principal_id)])

        async def call() -> T:
            op: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
                self._books_workflow,
                start,
                id=books_id,
                task_queue=self._task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                # books never finish on their own: ended ones are never silently restarted empty; only
                # failed ones are (books fail only when their start was forged)
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                search_attributes=attrs,
                static_summary="spend books",
            )
            result: T = await self._client.execute_update_with_start_workflow(
                update, arg, start_workflow_operation=op, result_type=result_type
            )
            return result

        try:
            return await self._queued(books_id, call)  # type: ignore[no-any-return]
        except WorkflowAlreadyStartedError as err:
            message = f"LEDGER_CLOSED: the spend books {books_id} have ended"
            raise ApplicationError(message, type="LEDGER_CLOSED", non_retryable=True) from err
        except WorkflowUpdateFailedError as err:
            _raise_update_error(err)

    async def _books_settle(self, principal_id: str, update: str, arg: BooksSettle) -> BooksSettleOutcome:
        """Commit or release on existing books (never starts them: there is nothing to settle)."""
        books_id = books_workflow_id(principal_id)
        kind = ProofKind.BOOKS_COMMIT if update == "commit_all" else ProofKind.BOOKS_RELEASE
        arg = self._authority.signed(arg, kind, books_id)
        handle = self._client.get_workflow_handle(books_id)
        try:
            out: BooksSettleOutcome = await self._queued(
                books_id, lambda: handle.execute_update(update, arg, result_type=BooksSettleOutcome)
            )
            return out
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            if update == "release_all":
                return BooksSettleOutcome(outcomes=[None for _ in arg.ledger_ids])
            raise ApplicationError(
                f"RESERVATION_NOT_FOUND: no spend books {books_id}",
                type="RESERVATION_NOT_FOUND",
                non_retryable=True,
            ) from err
        except WorkflowUpdateFailedError as err:
            _raise_update_error(err)

    async def books_view(self, principal_id: str) -> BooksView | None:
        """Every open book of the principal, or None when it has no books."""
        view: BooksView | None = await self._query(books_workflow_id(principal_id), "books", BooksView)
        return view

    async def _query(self, workflow_id: str, name: str, result_type: type, *args: Any) -> Any:
        """A query's answer, or None when there is no such workflow, or its query failed (a workflow
        whose forged start failed it holds nothing)."""
        handle = self._client.get_workflow_handle(workflow_id)
        try:
            return await self._retrying(lambda: handle.query(name, *args, result_type=result_type))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        except WorkflowQueryFailedError:
            return None

    # ---- limits -----------------------------------------------------------------------------------

    async def principal_limits(self, principal_id: str) -> PrincipalLimits:
        """The principal's limits; the defaults (USD 100 per provider) when none were ever set."""
        limits: PrincipalLimits | None = await self._query(
            limits_workflow_id(principal_id), "limits", PrincipalLimits
        )
        return limits or PrincipalLimits(principal_id=principal_id)

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
            principal, in_books, _ = await self._split([layer])
            if in_books and principal is not None:
                push = BooksSetLimit(
                    start=await self._layer_start(layer, None, limits), limit=limit, version=limits.version
                )
                await self._books_update(principal, "set_limit", push, ProofKind.BOOKS_SET_LIMIT, LedgerView)
                continue
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
        caller = self._override_caller(req)
        spends = {layer.ledger_id: self._reservation(req, layer, caller, current, limits) for layer in layers}
        principal, in_books, in_ledgers = await self._split(layers)
        held: list[tuple[LedgerLayer, datetime | None]] = []
        outcomes: list[ReserveOutcome] = []
        try:
            for layer in in_ledgers:
                spend = spends[layer.ledger_id]
                out = await self._ledger_update(layer, "reserve", spend, ReserveOutcome, req, limits)
                outcomes.append(out)
                if out.status not in ("reserved", "already_reserved", "already_committed"):
                    await self._roll_back(req.purchase_id, held)
                    return self._refused(layer, out, outcomes, skipped)
                held.append((layer, out.expires_at if out.status != "already_committed" else None))
            if in_books and principal is not None:
                book_layers = []
                for layer in in_books:
                    spend = spends[layer.ledger_id]
                    book_layers.append(
                        BookReserve(
                            start=await self._layer_start(layer, req, limits),
                            limit=spend.limit,
                            limit_version=spend.limit_version,
                            override_approval_id=spend.override_approval_id,
                        )
                    )
                booked = await self._books_update(
                    principal,
                    "reserve_all",
                    BooksReserve(
                        purchase_id=req.purchase_id,
                        amount=req.amount,
                        hold_seconds=req.hold_seconds,
                        requested_by=caller,
                        layers=book_layers,
                    ),
                    ProofKind.BOOKS_RESERVE,
                    BooksReserveOutcome,
                )
                outcomes += booked.outcomes
                if booked.refused is not None:  # the books hold nothing of it then
                    await self._roll_back(req.purchase_id, held)
                    return self._refused(in_books[booked.refused], booked.outcomes[-1], outcomes, skipped)
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
    def _override_caller(req: ReserveLayers) -> str | None:
        """The workflow an override must belong to: the calling workflow's own approval only (in-process
        callers such as tests name the approval's workflow themselves)."""
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
        return caller

    @staticmethod
    def _reservation(
        req: ReserveLayers,
        layer: LedgerLayer,
        caller: str | None,
        current: dict[str, Money],
        limits: PrincipalLimits | None,
    ) -> ReserveSpend:
        override = req.override_approval_id
        if req.override_ledger_ids is not None and layer.ledger_id not in req.override_ledger_ids:
            override = None
        if layer.kind not in OVERRIDABLE_KINDS:
            override = None  # a one-time approval over the cap never lifts an agent's limits
        limit = current.get(layer.ledger_id)
        return ReserveSpend(
            purchase_id=req.purchase_id,
            amount=req.amount,
            hold_seconds=req.hold_seconds,
            override_approval_id=override,
            requested_by=caller,
            limit=limit,
            limit_version=limits.version if limit is not None and limits is not None else None,
        )

    @staticmethod
    def _refused(
        layer: LedgerLayer, out: ReserveOutcome, outcomes: list[ReserveOutcome], skipped: list[str]
    ) -> LayeredReserveOutcome:
        code = REFUSAL_CODES.get(layer.kind) if out.status == "over_limit" else None
        return LayeredReserveOutcome(
            ok=False, refused_by=layer, outcome=out, outcomes=outcomes, code=code, skipped=skipped
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
            _raise_update_error(err, layer.ledger_id)

    @activity.defn(name="commit_spend")
    async def commit_spend(self, req: CommitLayers) -> None:
        """Commit the charged amount (≤ the reservation) on every layer."""
        principal, in_books, in_ledgers = await self._split(sorted(req.layers, key=_layer_order))
        for layer in in_ledgers:
            await self._settle(layer, "commit", CommitSpend(purchase_id=req.purchase_id, amount=req.amount))
        if in_books and principal is not None:
            ids = [layer.ledger_id for layer in in_books]
            commit = BooksSettle(purchase_id=req.purchase_id, ledger_ids=ids, amount=req.amount)
            await self._books_settle(principal, "commit_all", commit)

    @activity.defn(name="release_spend")
    async def release_spend(self, req: ReleaseLayers) -> None:
        """Release the purchase on every layer; the purchase id is settled and cannot reserve again."""
        principal, in_books, in_ledgers = await self._split(sorted(req.layers, key=_layer_order))
        for layer in in_ledgers:
            await self._settle(layer, "release", ReleaseSpend(purchase_id=req.purchase_id))
        if in_books and principal is not None:
            ids = [layer.ledger_id for layer in in_books]
            await self._books_settle(
                principal, "release_all", BooksSettle(purchase_id=req.purchase_id, ledger_ids=ids)
            )

    # ---- reading ----------------------------------------------------------------------------------

    async def ledger_view(self, ledger_id: str, principal_id: str | None = None) -> LedgerView | None:
        """A layer's view: its book in the principal's books (the principal comes from the id, or for a
        budget from `principal_id`), else its ledger (running or finished); None if neither exists."""
        principal = principal_id or principal_of_id(ledger_id)
        if principal is not None:
            view = await self._book_view(principal, ledger_id)
            if view is not None:
                return view
        return await self._ledger_view(ledger_id)

    async def _book_view(self, principal_id: str, ledger_id: str) -> LedgerView | None:
        # a book the books never had comes back as null
        view: LedgerView | None = await self._query(
            books_workflow_id(principal_id), "view", LedgerView, ledger_id
        )
        return view

    async def _ledger_view(self, ledger_id: str) -> LedgerView | None:
        view: LedgerView | None = await self._query(ledger_id, "view", LedgerView)
        return view

    async def layer_open(self, ledger_id: str, principal_id: str | None = None) -> bool:
        """Does the layer still take reservations: an open book, or a running ledger?"""
        principal = principal_id or principal_of_id(ledger_id)
        if principal is not None:
            view = await self._book_view(principal, ledger_id)
            if view is not None:
                return not view.closed
        try:
            desc = await self._client.get_workflow_handle(ledger_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return desc.status == WorkflowExecutionStatus.RUNNING

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
        books = await self.books_view(req.principal_id)
        booked = {v.ledger_id: v for v in (*books.books, *books.closed)} if books else {}
        for ledger_id in booked:
            name = parse_monthly_ledger_id(ledger_id)
            if name is not None and name.month == month:
                providers.add(name.provider)
        rows = []
        for provider in sorted(providers):
            ledger_id = f"{prefix}{provider}-{month}"
            limit = limits.for_provider(provider)
            view = (
                booked.get(ledger_id)
                or await self._ledger_view(ledger_id)
                or LedgerView(
                    ledger_id=ledger_id,
                    kind="monthly",
                    month=month,
                    limit=limit,
                    effective_limit=limit,
                    committed=Money(amount=0, currency=limit.currency),
                    reserved=Money(amount=0, currency=limit.currency),
                    remaining=limit,
                )
            )
            source = limits.source_for(provider)
            rows.append(ProviderSpend(provider=provider, limit_source=source, ledger=view))
        agents = await self._agent_rows(req.principal_id, month, limits, booked)
        return SpendSummary(
            principal_id=req.principal_id, month=month, limits=limits, providers=rows, agents=agents
        )

    async def _agent_rows(
        self, principal_id: str, month: str, limits: PrincipalLimits, booked: dict[str, LedgerView]
    ) -> list[AgentSpend]:
        """Every agent with its own limits or a ledger this month: its layers, spend and last hour."""
        names = set(limits.per_agent)
        for ledger_id in booked:
            name = parse_agent_ledger_id(ledger_id)
            if name is not None and name.principal_id == principal_id and name.month in (None, month):
                names.add(name.agent)
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
            velocity_id, month_id = (
                velocity_ledger_id(principal_id, agent),
                agent_ledger_id(principal_id, agent, when),
            )
            velocity = booked.get(velocity_id) or await self._ledger_view(velocity_id)
            ledger = booked.get(month_id) or await self._ledger_view(month_id)
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
