"""Attenuation: the pure rules that make a delegated session narrower than its parent, never wider.

The session workflow calls `attenuate` when an agent delegates; the property test calls the same
function on random delegation trees. No I/O, no clock: `now` is passed in (`workflow.now()`).

Service patterns: `<provider>/<service>` (exact), `<provider>/<prefix>*` (services starting with the
prefix), `<provider>/*` (every service of that provider) and `*` (everything). A child pattern is
allowed only when one parent pattern contains it; for this grammar that is exact set containment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from models.errors import ErrorCode
from models.money import Money
from models.session import DelegationAsk, SessionGrant


class AttenuationError(Exception):
    """A delegation that would widen (or is malformed). `code` is an ErrorCode value."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Pattern:
    provider: str | None  # None = any provider
    service: str  # literal service, or a prefix when `prefix`
    prefix: bool


def _parse(pattern: str) -> _Pattern:
    if pattern == "*":
        return _Pattern(None, "", True)
    provider, _, service = pattern.partition("/")
    if not provider or not service or provider == "*":
        raise AttenuationError(ErrorCode.INVALID_REQUEST, f"bad service pattern {pattern!r}")
    if service.endswith("*"):
        return _Pattern(provider, service[:-1], True)
    return _Pattern(provider, service, False)


def service_matches(pattern: str, service_id: str) -> bool:
    """Whether the concrete `service_id` (`provider/service`) is allowed by `pattern`."""
    p = _parse(pattern)
    provider, _, service = service_id.partition("/")
    if p.provider is not None and p.provider != provider:
        return False
    return service.startswith(p.service) if p.prefix else service == p.service


def pattern_contains(outer: str, inner: str) -> bool:
    """Whether every service matched by `inner` is matched by `outer`."""
    o, i = _parse(outer), _parse(inner)
    if o.provider is not None and o.provider != i.provider:
        return False
    if not o.prefix:
        return not i.prefix and i.service == o.service
    return i.service.startswith(o.service)


def services_allowed(patterns: list[str], service_id: str) -> bool:
    return any(service_matches(p, service_id) for p in patterns)


def services_contained(parent: list[str], child: list[str]) -> bool:
    return all(any(pattern_contains(p, c) for p in parent) for c in child)


def attenuate(
    parent: SessionGrant,
    *,
    parent_depth: int,
    ask: DelegationAsk,
    now: datetime,
    parent_remaining: Money | None = None,
) -> SessionGrant:
    """The child grant for `ask` under `parent`, or AttenuationError when it would widen anything.

    Missing fields inherit the parent's value (budget: what is left of it). Budget is shared: the
    child's spend also counts in every ancestor's ledger, so its limit never exceeds the remaining.
    """
    if parent.expires_at <= now:
        raise AttenuationError(ErrorCode.SESSION_EXPIRED, "the parent session has expired")
    depth = parent_depth + 1
    if depth > parent.max_depth:
        raise AttenuationError(
            ErrorCode.INVALID_REQUEST,
            f"delegation depth {depth} exceeds the session's limit {parent.max_depth} (the human opens the"
            f" root session with a deeper limit: qm session open ... --max-depth {depth})",
        )
    services = (
        list(ask.allowed_services) if ask.allowed_services is not None else list(parent.allowed_services)
    )
    if not services:
        raise AttenuationError(ErrorCode.INVALID_REQUEST, "a session needs at least one allowed service")
    for pattern in services:
        _parse(pattern)
    if not services_contained(parent.allowed_services, services):
        raise AttenuationError(ErrorCode.SERVICE_NOT_ALLOWED, "a requested service is outside the parent's")

    remaining = parent.budget
    if parent_remaining is not None:
        if parent_remaining.currency != parent.budget.currency:
            raise AttenuationError(ErrorCode.CURRENCY_MISMATCH, "the parent's ledger is in another currency")
        remaining = Money(
            amount=min(parent_remaining.amount, parent.budget.amount), currency=remaining.currency
        )
    budget = ask.budget if ask.budget is not None else remaining
    if budget.currency != parent.budget.currency:
        raise AttenuationError(ErrorCode.CURRENCY_MISMATCH, "the budget's currency differs from the parent's")
    if budget.amount > remaining.amount:
        raise AttenuationError(ErrorCode.BUDGET_EXCEEDED, f"the budget exceeds what is left ({remaining})")

    if ask.ttl_seconds is None:
        expires_at = parent.expires_at
    else:
        if ask.ttl_seconds <= 0:
            raise AttenuationError(ErrorCode.INVALID_REQUEST, "ttl must be positive")
        expires_at = now + timedelta(seconds=ask.ttl_seconds)
        if expires_at > parent.expires_at:
            raise AttenuationError(ErrorCode.INVALID_REQUEST, "the ttl outlives the parent session")

    requested_depth = parent.max_depth if ask.max_depth is None else ask.max_depth
    if requested_depth > parent.max_depth:
        raise AttenuationError(ErrorCode.INVALID_REQUEST, "max depth above the parent's")
    # below the child's own depth means "no further delegation"
    max_depth = max(requested_depth, depth)

    scopes: list[str] | None
    if ask.allowed_scopes is None:
        scopes = None if parent.allowed_scopes is None else list(parent.allowed_scopes)
    else:
        scopes = list(ask.allowed_scopes)
        if parent.allowed_scopes is not None and not set(scopes) <= set(parent.allowed_scopes):
            raise AttenuationError(ErrorCode.SERVICE_NOT_ALLOWED, "a requested scope is outside the parent's")

    return SessionGrant(
        allowed_services=services,
        budget=budget,
        expires_at=expires_at,
        max_depth=max_depth,
        allowed_scopes=scopes,
    )
