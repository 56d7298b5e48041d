"""`Book`: one spend layer's rules and state, shared by `SpendLedgerWorkflow` (one book per workflow) and
`SpendBooksWorkflow` (every book of a principal in one workflow).

Invariant at every instant: committed + reserved ≤ effective limit (the base limit plus the one-time
overrides a human approved for specific purchases). Every method is synchronous and runs inside a
workflow (it reads `workflow.now()`): the workflow's update handlers call them with no await in between,
so two reservations can never both see the same headroom.

A `velocity` book counts purchases instead of money: each reservation is one unit, and a committed
purchase keeps counting for `VELOCITY_WINDOW` after it was reserved; its limit's amount is the number of
purchases allowed in that rolling window. It never lifts for an override and never closes.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from models.audit import AuditEvent
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
        SettleOutcome,
        SpendAlert,
        month_end,
    )
    from models.money import MAX_MINOR_UNITS, Money


def reject(code: str, message: str) -> ApplicationError:
    return ApplicationError(f"{code}: {message}", type=code, non_retryable=True)


class Book:
    def __init__(self, start: LedgerStart, state: LedgerState | None = None) -> None:
        self.start = start
        self.s = state or LedgerState(limit=start.limit, limit_version=start.limit_version)
        self.committed_ids = set(self.s.committed_ids)
        self.released_ids = set(self.s.released_ids)

    # ---- derived values -------------------------------------------------------------------------

    @property
    def ledger_id(self) -> str:
        return self.start.ledger_id

    @property
    def currency(self) -> str:
        return self.s.limit.currency

    @property
    def velocity(self) -> bool:
        return self.start.kind == "velocity"

    def reserved(self) -> int:
        return sum(r.amount for r in self.s.reservations.values())

    def committed(self) -> int:
        """Money committed, or for a velocity book the purchases committed in the rolling window."""
        if not self.velocity:
            return self.s.committed
        since = workflow.now() - VELOCITY_WINDOW
        return sum(1 for at in self.s.counted.values() if at > since)

    def prune_counted(self) -> None:
        # kept past the window for as long as a late commit or release of the purchase may come
        horizon = workflow.now() - VELOCITY_WINDOW - timedelta(seconds=MAX_HOLD_SECONDS)
        for pid, at in list(self.s.counted.items()):
            if at <= horizon:
                del self.s.counted[pid]

    def overrides(self) -> int:
        # overrides of committed purchases stay: the human approved that spend
        return sum(r.override for r in self.s.reservations.values()) + self.s.committed_overrides

    def effective_limit(self) -> int:
        return self.s.limit.amount + self.overrides()

    def money(self, amount: int) -> Money:
        return Money(amount=min(max(amount, 0), MAX_MINOR_UNITS), currency=self.currency)

    def outcome(self, status: str, purchase_id: str | None = None) -> ReserveOutcome:
        reserved = self.reserved()
        res = self.s.reservations.get(purchase_id or "")
        committed = self.committed()
        return ReserveOutcome(
            status=status,
            limit=self.s.limit,
            committed=self.money(committed),
            reserved=self.money(reserved),
            remaining=self.money(self.effective_limit() - committed - reserved),
            ledger_id=self.ledger_id,
            effective_limit=self.money(self.effective_limit()),
            expires_at=res.expires_at if res else None,
        )

    def settled(self, status: str) -> SettleOutcome:
        o = self.outcome("reserved")
        return SettleOutcome(
            status=status, limit=o.limit, committed=o.committed, reserved=o.reserved, remaining=o.remaining
        )

    def touch(self) -> None:
        self.s.last_activity = workflow.now()

    # ---- checks (validators: raise before anything changes) ----------------------------------------

    def check_currency(self, money: Money) -> None:
        if self.velocity:
            return  # counts purchases in any currency
        if money.currency != self.currency:
            want, got = self.currency.upper(), money.currency.upper()
            raise reject("CURRENCY_MISMATCH", f"ledger {self.ledger_id} is in {want}, got {got}")

    @staticmethod
    def check_override(approval_id: str | None, requested_by: str | None) -> None:
        if approval_id is None:
            return
        if not approval_id.endswith(".spend_limit"):
            raise reject("INVALID_REQUEST", "an override names a spend_limit approval")
        # an override is valid only for an approval the requesting workflow itself granted
        if approval_id != f"{requested_by}.spend_limit":
            raise reject("AUTHORITY_INVALID", "an override names another workflow's approval")

    def check_reserve(self, req: ReserveSpend) -> None:
        self.check_currency(req.amount)
        if req.limit is not None:
            self.check_currency(req.limit)
        if req.amount.amount <= 0:
            raise reject("INVALID_REQUEST", "a reservation is a positive amount")
        self.check_override(req.override_approval_id, req.requested_by)

    # ---- changes --------------------------------------------------------------------------------

    def reserve(self, req: ReserveSpend) -> ReserveOutcome:
        """Hold the amount if it fits."""
        self.touch()
        pid = req.purchase_id
        if pid in self.s.reservations:
            return self.outcome("already_reserved", pid)
        if pid in self.committed_ids:
            return self.outcome("already_committed", pid)
        if pid in self.released_ids:
            return self.outcome("already_released", pid)
        if req.limit is not None and req.limit_version is not None:
            self.adopt_limit(req.limit, req.limit_version)
        units = 1 if self.velocity else req.amount.amount
        used = self.committed() + self.reserved()
        over = used + units - self.effective_limit()
        override = 0
        if over > 0:
            if req.override_approval_id is None or self.velocity:
                return self.outcome("over_limit")
            override = over  # lift the limit by exactly this purchase's overshoot, nothing more
        now = workflow.now()
        self.s.reservations[pid] = Reservation(
            amount=units,
            reserved_at=now,
            expires_at=now + timedelta(seconds=req.hold_seconds),
            override_approval_id=req.override_approval_id if override else None,
            override=override,
        )
        return self.outcome("reserved", pid)

    def commit(self, req: CommitSpend) -> SettleOutcome:
        """Record what was charged (≤ the reservation) and free the rest of the hold."""
        self.touch()
        pid = req.purchase_id
        if pid in self.committed_ids:
            return self.settled("already_committed")
        refusal = self.commit_refusal(req)
        if refusal is not None:
            raise refusal
        res = self.s.reservations[pid]
        if self.velocity:  # one purchase: it counts from its reservation until the window passes
            del self.s.reservations[pid]
            self.prune_counted()
            self.s.counted[pid] = res.reserved_at
            self.s.committed += 1
            self.committed_ids.add(pid)
            return self.settled("committed")
        # an override only covers what was actually spent over the base limit
        kept_override = max(0, res.override - (res.amount - req.amount.amount))
        del self.s.reservations[pid]
        self.s.committed += req.amount.amount
        self.s.committed_overrides += kept_override
        self.committed_ids.add(pid)
        self.queue_alerts()
        return self.settled("committed")

    def commit_refusal(self, req: CommitSpend) -> ApplicationError | None:
        """What `commit` would raise, without changing anything (to check every book before any)."""
        pid = req.purchase_id
        if pid in self.committed_ids:
            return None
        res = self.s.reservations.get(pid)
        if res is None:
            code = "RESERVATION_RELEASED" if pid in self.released_ids else "RESERVATION_NOT_FOUND"
            return reject(code, f"purchase {pid} holds no reservation on {self.ledger_id}")
        if not self.velocity and req.amount.amount > res.amount:
            return reject("COMMIT_EXCEEDS_RESERVATION", f"purchase {pid} commits more than it reserved")
        return None

    def release(self, req: ReleaseSpend) -> SettleOutcome:
        """Give the hold back. Unknown ids are tombstoned too, so a late reserve cannot revive them."""
        self.touch()
        pid = req.purchase_id
        if pid in self.committed_ids:
            return self.settled("already_committed")
        if req.forget and req.held_until is not None:
            current = self.s.reservations.get(pid)
            if current is None or current.expires_at != req.held_until:
                return self.settled("not_reserved")  # a later reservation of the same purchase: keep it
        held = self.s.reservations.pop(pid, None)
        if req.forget:
            return self.settled("released" if held else "not_reserved")
        if pid in self.released_ids:
            return self.settled("already_released")
        self.released_ids.add(pid)
        return self.settled("released" if held else "not_reserved")

    def adopt_limit(self, limit: Money, version: int) -> None:
        if version > self.s.limit_version:
            self.s.limit = limit
            self.s.limit_version = version
            self.queue_alerts()

    def view(self, *, closed: bool = False) -> LedgerView:
        reserved, committed = self.reserved(), self.committed()
        return LedgerView(
            ledger_id=self.ledger_id,
            kind=self.start.kind,
            month=self.start.month,
            limit=self.s.limit,
            effective_limit=self.money(self.effective_limit()),
            committed=self.money(committed),
            reserved=self.money(reserved),
            remaining=self.money(self.effective_limit() - committed - reserved),
            reservations=[
                ReservationView(
                    purchase_id=pid,
                    amount=self.money(r.amount),
                    reserved_at=r.reserved_at,
                    expires_at=r.expires_at,
                    override_approval_id=r.override_approval_id,
                    override=r.override,
                )
                for pid, r in sorted(self.s.reservations.items())
            ],
            alerts_sent=sorted(self.s.alerts_sent),
            purchases_committed=len(self.committed_ids),
            purchases_released=len(self.released_ids) - self.s.expired_count,
            purchases_expired=self.s.expired_count,
            limit_version=self.s.limit_version,
            generation=self.s.generation,
            closed=closed,
            counted=sorted(self.s.counted.values()),
        )

    # ---- time -----------------------------------------------------------------------------------

    def queue_alerts(self) -> None:
        if self.velocity:
            return  # a count per hour, not spend: nothing to alert on
        limit = self.s.limit.amount
        for threshold in ALERT_THRESHOLDS:
            crossed = limit > 0 and self.s.committed * 100 >= threshold * limit
            if crossed and threshold not in self.s.alerts_sent:
                self.s.alerts_sent.append(threshold)
                self.s.pending_alerts.append(threshold)

    def expire_due(self) -> None:
        now = workflow.now()
        for pid, res in list(self.s.reservations.items()):
            if res.expires_at <= now:
                del self.s.reservations[pid]
                self.released_ids.add(pid)
                self.s.expired_count += 1

    def close_at(self) -> datetime | None:
        if self.velocity:
            return None  # the window rolls on; only continue-as-new bounds the history
        if self.start.kind in ("monthly", "agent_monthly") and self.start.month:
            return month_end(self.start.month) + MONTHLY_GRACE
        if self.s.last_activity is None:
            return workflow.now() + timedelta(seconds=self.start.idle_close_seconds)
        return self.s.last_activity + timedelta(seconds=self.start.idle_close_seconds)

    def next_deadline(self) -> datetime | None:
        times = [r.expires_at for r in self.s.reservations.values()]
        close = self.close_at()
        # a close time that has passed waits for the reservations still held (it would otherwise be a
        # deadline of zero, again and again, without the workflow ever yielding)
        if close is not None and (not times or close > workflow.now()):
            times.append(close)
        return min(times) if times else None

    def due_to_close(self) -> bool:
        close = self.close_at()
        return close is not None and workflow.now() >= close and not self.s.reservations

    def snapshot(self) -> LedgerState:
        """The state to carry across a continue-as-new (a velocity book only what a late commit or
        release may still need)."""
        if self.velocity:
            self.prune_counted()
            self.committed_ids = set(self.s.counted)
            self.released_ids = set()
        self.s.committed_ids = sorted(self.committed_ids)
        self.s.released_ids = sorted(self.released_ids)
        return self.s

    def alert(self, threshold: int) -> tuple[SpendAlert, AuditEvent]:
        """The alert for a crossed threshold and its audit event (same id: each is sent once)."""
        event_id = f"{self.ledger_id}:alert:{threshold}"
        committed, limit = self.money(self.s.committed), self.s.limit
        alert = SpendAlert(
            event_id=event_id,
            ledger_id=self.ledger_id,
            kind=self.start.kind,
            threshold=threshold,
            committed=committed,
            limit=limit,
            month=self.start.month,
            provider=self.start.provider,
            principal_id=self.start.principal_id,
            principal_email=self.start.principal_email,
        )
        event = AuditEvent(
            event_id=event_id,
            time=workflow.now(),
            action="spend.alert",
            principal_id=self.start.principal_id,
            workflow_id=self.ledger_id,
            provider=self.start.provider,
            amount=committed,
            details={"threshold": threshold, "limit": limit.model_dump(), "month": self.start.month},
        )
        return alert, event
