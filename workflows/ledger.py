"""`SpendLedgerWorkflow`: one entity workflow per spend layer (monthly cap or budget).

Invariant at every instant: committed + reserved ≤ effective limit (the base limit plus the one-time
overrides a human approved for specific purchases). The handlers are synchronous, so each update's
check and state change happen in one step with no await in between: two concurrent reservations can
never both see the same headroom. Validators reject malformed input (currency, amounts, ids) and any
change without the worker's authority proof (`workflows.authority`): a Temporal client without the
server-side key cannot reserve, commit, release, override or set a limit. A first run whose start
carries no valid proof fails at once (its limit never counts); only a continue-as-new carries state.

A `velocity` ledger (one per principal and agent) counts purchases instead of money: each reservation
is one unit, and a committed purchase keeps counting for `VELOCITY_WINDOW` after it was reserved; its
limit's amount is the number of purchases allowed in that rolling window. It never lifts for an
override and never closes (the window rolls over month ends); it continues as new like every ledger.

The run loop does the slow work outside the handlers: it expires reservations by timer, sends alerts
and audit events through activities, continues as new long before the history gets large (carrying
every settled purchase id), and finishes a monthly ledger 35 days after its month ends.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.audit import AuditEvent
    from models.authority import ProofKind, change_of
    from models.ledger import (
        ALERT_THRESHOLDS,
        MAX_HOLD_SECONDS,
        MONTHLY_GRACE,
        VELOCITY_WINDOW,
        CommitSpend,
        LedgerStart,
        LedgerState,
        LedgerView,
        ReleaseSpend,
        Reservation,
        ReservationView,
        ReserveOutcome,
        ReserveSpend,
        SetLedgerLimit,
        SettleOutcome,
        SpendAlert,
        month_end,
    )
    from models.money import MAX_MINOR_UNITS, Money
    from workflows import authority

_ACTIVITY_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=60))


def _reject(code: str, message: str) -> ApplicationError:
    return ApplicationError(f"{code}: {message}", type=code, non_retryable=True)


@workflow.defn(name="SpendLedger")
class SpendLedgerWorkflow:
    @workflow.init
    def __init__(self, start: LedgerStart) -> None:
        self._start = start
        #: a first run started without the worker's proof: it fails before anything counts
        carried = authority.from_own_continue_as_new()
        self._forged = (
            not carried
            and authority.required()
            and not authority.verify(
                start.proof,
                kind=ProofKind.LEDGER_START,
                target=workflow.info().workflow_id,
                change=change_of(start, exclude=frozenset({"state"})),
                issued_near=workflow.info().workflow_start_time,
            )
        )
        if self._forged or (start.state is not None and not carried):
            # state is only ever carried by this workflow's own continue-as-new
            start = start.model_copy(
                update={"state": None, "limit": Money(amount=0, currency=start.limit.currency)}
            )
            self._start = start
        self._s = start.state or LedgerState(limit=start.limit, limit_version=start.limit_version)
        self._committed_ids = set(self._s.committed_ids)
        self._released_ids = set(self._s.released_ids)
        self._updates_this_run = 0
        self._armed: datetime | None = None
        self._closed = False

    # ---- derived values -------------------------------------------------------------------------

    @property
    def _currency(self) -> str:
        return self._s.limit.currency

    @property
    def _velocity(self) -> bool:
        return self._start.kind == "velocity"

    def _reserved(self) -> int:
        return sum(r.amount for r in self._s.reservations.values())

    def _committed(self) -> int:
        """Money committed, or for a velocity ledger the purchases committed in the rolling window."""
        if not self._velocity:
            return self._s.committed
        since = workflow.now() - VELOCITY_WINDOW
        return sum(1 for at in self._s.counted.values() if at > since)

    def _prune_counted(self) -> None:
        # kept past the window for as long as a late commit or release of the purchase may come
        horizon = workflow.now() - VELOCITY_WINDOW - timedelta(seconds=MAX_HOLD_SECONDS)
        for pid, at in list(self._s.counted.items()):
            if at <= horizon:
                del self._s.counted[pid]

    def _overrides(self) -> int:
        # overrides of committed purchases stay: the human approved that spend
        return sum(r.override for r in self._s.reservations.values()) + self._s.committed_overrides

    def _effective_limit(self) -> int:
        return self._s.limit.amount + self._overrides()

    def _money(self, amount: int) -> Money:
        return Money(amount=min(max(amount, 0), MAX_MINOR_UNITS), currency=self._currency)

    def _outcome(self, status: str, purchase_id: str | None = None) -> ReserveOutcome:
        reserved = self._reserved()
        res = self._s.reservations.get(purchase_id or "")
        committed = self._committed()
        return ReserveOutcome(
            status=status,
            limit=self._s.limit,
            committed=self._money(committed),
            reserved=self._money(reserved),
            remaining=self._money(self._effective_limit() - committed - reserved),
            ledger_id=self._start.ledger_id,
            effective_limit=self._money(self._effective_limit()),
            expires_at=res.expires_at if res else None,
        )

    def _settled(self, status: str) -> SettleOutcome:
        o = self._outcome("reserved")
        return SettleOutcome(
            status=status,
            limit=o.limit,
            committed=o.committed,
            reserved=o.reserved,
            remaining=o.remaining,
        )

    def _touch(self) -> None:
        self._updates_this_run += 1
        self._s.last_activity = workflow.now()

    def _check_proof(
        self, kind: ProofKind, req: ReserveSpend | CommitSpend | ReleaseSpend | SetLedgerLimit
    ) -> None:
        if self._forged or not authority.verify(
            req.proof, kind=kind, target=self._start.ledger_id, change=change_of(req)
        ):
            raise _reject("AUTHORITY_INVALID", f"{kind} on {self._start.ledger_id} without a valid proof")

    def _check_currency(self, money: Money) -> None:
        if self._velocity:
            return  # counts purchases in any currency
        if money.currency != self._currency:
            ledger, want, got = self._start.ledger_id, self._currency.upper(), money.currency.upper()
            raise _reject("CURRENCY_MISMATCH", f"ledger {ledger} is in {want}, got {got}")

    # ---- updates --------------------------------------------------------------------------------

    @workflow.update(name="reserve")
    def reserve(self, req: ReserveSpend) -> ReserveOutcome:
        """Hold the amount if it fits; all checks and the state change happen with no await."""
        self._touch()
        pid = req.purchase_id
        if pid in self._s.reservations:
            return self._outcome("already_reserved", pid)
        if pid in self._committed_ids:
            return self._outcome("already_committed", pid)
        if pid in self._released_ids:
            return self._outcome("already_released", pid)
        if req.limit is not None and req.limit_version is not None:
            self._adopt_limit(req.limit, req.limit_version)
        units = 1 if self._velocity else req.amount.amount
        used = self._committed() + self._reserved()
        over = used + units - self._effective_limit()
        override = 0
        if over > 0:
            if req.override_approval_id is None or self._velocity:
                return self._outcome("over_limit")
            override = over  # lift the limit by exactly this purchase's overshoot, nothing more
        now = workflow.now()
        self._s.reservations[pid] = Reservation(
            amount=units,
            reserved_at=now,
            expires_at=now + timedelta(seconds=req.hold_seconds),
            override_approval_id=req.override_approval_id if override else None,
            override=override,
        )
        return self._outcome("reserved", pid)

    @reserve.validator
    def _validate_reserve(self, req: ReserveSpend) -> None:
        self._check_proof(ProofKind.LEDGER_RESERVE, req)
        self._check_currency(req.amount)
        if req.limit is not None:
            self._check_currency(req.limit)
        if req.amount.amount <= 0:
            raise _reject("INVALID_REQUEST", "a reservation is a positive amount")
        if req.override_approval_id is not None and not req.override_approval_id.endswith(".spend_limit"):
            raise _reject("INVALID_REQUEST", "an override names a spend_limit approval")
        # an override is valid only for an approval the requesting workflow itself granted
        if (
            req.override_approval_id is not None
            and req.override_approval_id != f"{req.requested_by}.spend_limit"
        ):
            raise _reject("AUTHORITY_INVALID", "an override names another workflow's approval")

    @workflow.update(name="commit")
    def commit(self, req: CommitSpend) -> SettleOutcome:
        """Record what was charged (≤ the reservation) and free the rest of the hold."""
        self._touch()
        pid = req.purchase_id
        if pid in self._committed_ids:
            return self._settled("already_committed")
        res = self._s.reservations.get(pid)
        if res is None:
            code = "RESERVATION_RELEASED" if pid in self._released_ids else "RESERVATION_NOT_FOUND"
            raise _reject(code, f"purchase {pid} holds no reservation on {self._start.ledger_id}")
        if self._velocity:  # one purchase: it counts from its reservation until the window passes
            del self._s.reservations[pid]
            self._prune_counted()
            self._s.counted[pid] = res.reserved_at
            self._s.committed += 1
            self._committed_ids.add(pid)
            return self._settled("committed")
        if req.amount.amount > res.amount:
            raise _reject("COMMIT_EXCEEDS_RESERVATION", f"purchase {pid} commits more than it reserved")
        # an override only covers what was actually spent over the base limit
        kept_override = max(0, res.override - (res.amount - req.amount.amount))
        del self._s.reservations[pid]
        self._s.committed += req.amount.amount
        self._s.committed_overrides += kept_override
        self._committed_ids.add(pid)
        self._queue_alerts()
        return self._settled("committed")

    @commit.validator
    def _validate_commit(self, req: CommitSpend) -> None:
        self._check_proof(ProofKind.LEDGER_COMMIT, req)
        self._check_currency(req.amount)

    @workflow.update(name="release")
    def release(self, req: ReleaseSpend) -> SettleOutcome:
        """Give the hold back. Unknown ids are tombstoned too, so a late reserve cannot revive them."""
        self._touch()
        pid = req.purchase_id
        if pid in self._committed_ids:
            return self._settled("already_committed")
        if req.forget and req.held_until is not None:
            current = self._s.reservations.get(pid)
            if current is None or current.expires_at != req.held_until:
                return self._settled("not_reserved")  # a later reservation of the same purchase: keep it
        held = self._s.reservations.pop(pid, None)
        if req.forget:
            return self._settled("released" if held else "not_reserved")
        if pid in self._released_ids:
            return self._settled("already_released")
        self._released_ids.add(pid)
        return self._settled("released" if held else "not_reserved")

    @release.validator
    def _validate_release(self, req: ReleaseSpend) -> None:
        self._check_proof(ProofKind.LEDGER_RELEASE, req)

    @workflow.update(name="set_limit")
    def set_limit(self, req: SetLedgerLimit) -> LedgerView:
        """Apply a newer base limit. Lowering it below what is committed blocks new reservations only."""
        self._touch()
        self._adopt_limit(req.limit, req.version)
        return self.view()

    def _adopt_limit(self, limit: Money, version: int) -> None:
        if version > self._s.limit_version:
            self._s.limit = limit
            self._s.limit_version = version
            self._queue_alerts()

    @set_limit.validator
    def _validate_set_limit(self, req: SetLedgerLimit) -> None:
        self._check_proof(ProofKind.LEDGER_SET_LIMIT, req)
        self._check_currency(req.limit)

    @workflow.query(name="view")
    def view(self) -> LedgerView:
        reserved, committed = self._reserved(), self._committed()
        return LedgerView(
            ledger_id=self._start.ledger_id,
            kind=self._start.kind,
            month=self._start.month,
            limit=self._s.limit,
            effective_limit=self._money(self._effective_limit()),
            committed=self._money(committed),
            reserved=self._money(reserved),
            remaining=self._money(self._effective_limit() - committed - reserved),
            reservations=[
                ReservationView(
                    purchase_id=pid,
                    amount=self._money(r.amount),
                    reserved_at=r.reserved_at,
                    expires_at=r.expires_at,
                    override_approval_id=r.override_approval_id,
                    override=r.override,
                )
                for pid, r in sorted(self._s.reservations.items())
            ],
            alerts_sent=sorted(self._s.alerts_sent),
            purchases_committed=len(self._committed_ids),
            purchases_released=len(self._released_ids) - self._s.expired_count,
            purchases_expired=self._s.expired_count,
            limit_version=self._s.limit_version,
            generation=self._s.generation,
            closed=self._closed,
            counted=sorted(self._s.counted.values()),
        )

    # ---- state helpers --------------------------------------------------------------------------

    def _queue_alerts(self) -> None:
        if self._velocity:
            return  # a count per hour, not spend: nothing to alert on
        limit = self._s.limit.amount
        for threshold in ALERT_THRESHOLDS:
            crossed = limit > 0 and self._s.committed * 100 >= threshold * limit
            if crossed and threshold not in self._s.alerts_sent:
                self._s.alerts_sent.append(threshold)
                self._s.pending_alerts.append(threshold)

    def _expire_due(self) -> None:
        now = workflow.now()
        for pid, res in list(self._s.reservations.items()):
            if res.expires_at <= now:
                del self._s.reservations[pid]
                self._released_ids.add(pid)
                self._s.expired_count += 1

    def _close_at(self) -> datetime | None:
        if self._velocity:
            return None  # the window rolls on; only continue-as-new bounds the history
        if self._start.kind in ("monthly", "agent_monthly") and self._start.month:
            return month_end(self._start.month) + MONTHLY_GRACE
        if self._s.last_activity is None:
            return workflow.now() + timedelta(seconds=self._start.idle_close_seconds)
        return self._s.last_activity + timedelta(seconds=self._start.idle_close_seconds)

    def _next_deadline(self) -> datetime | None:
        times = [r.expires_at for r in self._s.reservations.values()]
        close = self._close_at()
        # a close time that has passed waits for the reservations still held (it would otherwise be a
        # deadline of zero, again and again, without the workflow ever yielding)
        if close is not None and (not times or close > workflow.now()):
            times.append(close)
        return min(times) if times else None

    def _continue_due(self) -> bool:
        info = workflow.info()
        return (
            info.get_current_history_length() >= self._start.continue_as_new_after_events
            or self._updates_this_run >= self._start.continue_as_new_after_updates
            or info.is_continue_as_new_suggested()
        )

    def _wake(self) -> bool:
        deadline = self._next_deadline()
        earlier = deadline is not None and (self._armed is None or deadline < self._armed)
        return bool(self._s.pending_alerts) or self._continue_due() or earlier

    # ---- side effects (outside the handlers) ------------------------------------------------------

    async def _send_alerts(self) -> None:
        while self._s.pending_alerts:
            threshold = self._s.pending_alerts[0]
            event_id = f"{self._start.ledger_id}:alert:{threshold}"
            committed, limit = self._money(self._s.committed), self._s.limit
            alert = SpendAlert(
                event_id=event_id,
                ledger_id=self._start.ledger_id,
                kind=self._start.kind,
                threshold=threshold,
                committed=committed,
                limit=limit,
                month=self._start.month,
                provider=self._start.provider,
                principal_id=self._start.principal_id,
                principal_email=self._start.principal_email,
            )
            await workflow.execute_activity(
                "spend_alert",
                alert,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_ACTIVITY_RETRY,
                summary=f"alert: {threshold}% of the limit",
            )
            await self._audit(
                AuditEvent(
                    event_id=event_id,
                    time=workflow.now(),
                    action="spend.alert",
                    principal_id=self._start.principal_id,
                    workflow_id=self._start.ledger_id,
                    provider=self._start.provider,
                    amount=committed,
                    details={"threshold": threshold, "limit": limit.model_dump(), "month": self._start.month},
                )
            )
            self._s.pending_alerts.pop(0)

    async def _audit(self, event: AuditEvent) -> None:
        await workflow.execute_activity(
            "record_audit",
            event,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_ACTIVITY_RETRY,
            summary=f"audit {event.action}",
        )

    @workflow.run
    async def run(self, start: LedgerStart) -> LedgerView:
        if self._forged:
            raise ApplicationError(
                f"AUTHORITY_INVALID: ledger {start.ledger_id} started without the worker's proof",
                type="AUTHORITY_INVALID",
                non_retryable=True,
            )
        workflow.set_current_details(f"spend ledger {start.ledger_id} ({start.kind})")
        while True:
            deadline = self._next_deadline()
            self._armed = deadline
            timeout = None if deadline is None else max(deadline - workflow.now(), timedelta(0))
            try:
                await workflow.wait_condition(self._wake, timeout=timeout, timeout_summary="next expiry")
            except TimeoutError:
                pass
            self._expire_due()
            await self._send_alerts()
            close = self._close_at()
            if close is not None and workflow.now() >= close and not self._s.reservations:
                await workflow.wait_condition(workflow.all_handlers_finished)
                self._closed = True
                return self.view()
            if self._continue_due():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._velocity:  # long-lived: carry only what a late commit or release may still need
                    self._prune_counted()
                    self._committed_ids = set(self._s.counted)
                    self._released_ids = set()
                self._s.committed_ids = sorted(self._committed_ids)
                self._s.released_ids = sorted(self._released_ids)
                self._s.generation += 1
                workflow.continue_as_new(start.model_copy(update={"state": self._s}))
