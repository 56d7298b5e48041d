"""Property: delegation only ever narrows. Random delegation trees (up to depth 5) go through the same
`attenuate` the session workflow uses; every accepted child is checked against its parent by meaning
(concrete witness services, budgets, expiries, depth), not by the function's own helpers.

The same harness runs against a deliberately broken variant to show it can fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from random import Random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.money import Money
from models.session import DelegationAsk, SessionGrant
from quartermaster.identity import attenuation
from quartermaster.identity.attenuation import AttenuationError, attenuate

PROVIDERS = ["cloud", "db", "mail"]
SERVICES = [
    "registrar:domain",
    "registrar:transfer",
    "workers",
    "r2",
    "postgres:free",
    "postgres:pro",
    "send",
]
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
MAX_TREE_DEPTH = 5

Attenuate = Callable[..., SessionGrant]


def _matches(pattern: str, service_id: str) -> bool:
    """Independent re-statement of the pattern grammar (the oracle, not the code under test)."""
    if pattern == "*":
        return True
    p_prov, p_svc = pattern.split("/", 1)
    prov, svc = service_id.split("/", 1)
    if p_prov != prov:
        return False
    return svc.startswith(p_svc[:-1]) if p_svc.endswith("*") else svc == p_svc


def _witnesses(pattern: str) -> list[str]:
    """Concrete services that expose any widening by `pattern` (`~` is outside every pattern's alphabet)."""
    if pattern == "*":
        return ["~/~", "~/"]
    prov, svc = pattern.split("/", 1)
    if svc.endswith("*"):
        return [f"{prov}/{svc[:-1]}", f"{prov}/{svc[:-1]}~"]
    return [f"{prov}/{svc}"]


def random_pattern(rng: Random) -> str:
    kind = rng.choice(["all", "provider", "prefix", "exact", "exact", "prefix"])
    if kind == "all":
        return "*"
    prov = rng.choice(PROVIDERS)
    if kind == "provider":
        return f"{prov}/*"
    svc = rng.choice(SERVICES)
    if kind == "prefix":
        return f"{prov}/{svc[: rng.randint(1, len(svc))]}*"
    return f"{prov}/{svc}"


def narrower_pattern(rng: Random, parent: list[str]) -> str:
    """Mostly a pattern inside one of the parent's (to reach deep trees), sometimes anything."""
    base = rng.choice(parent)
    if base == "*" or rng.random() < 0.05:
        return random_pattern(rng)
    prov, svc = base.split("/", 1)
    if svc.endswith("*"):
        extension = rng.choice(["", *[s for s in SERVICES if s.startswith(svc[:-1])]] or [""])
        return base if extension == "" else f"{prov}/{extension}"
    return base


def random_ask(rng: Random, parent: SessionGrant, remaining: Money) -> DelegationAsk:
    wide = rng.random() < 0.35  # a third of the asks are unconstrained: widening attempts
    services = None
    if rng.random() < 0.8:
        pick = random_pattern if wide else (lambda r: narrower_pattern(r, parent.allowed_services))
        services = [pick(rng) for _ in range(rng.randint(1, 3))]
    budget = None
    if rng.random() < 0.8:
        top = 12_000 if wide else remaining.amount
        budget = Money(amount=rng.randint(0, top))
    ttl = rng.choice([None, rng.randint(60, 8 * 3600) if wide else rng.randint(60, 1800)])
    max_depth = rng.choice([None, None, rng.randint(0, 6)])
    universe = ["read", "write", "admin"] if wide or parent.allowed_scopes is None else parent.allowed_scopes
    scopes = rng.choice([None, rng.sample(universe, rng.randint(0, len(universe)))])
    return DelegationAsk(
        allowed_services=services, budget=budget, ttl_seconds=ttl, max_depth=max_depth, allowed_scopes=scopes
    )


@dataclass
class Node:
    grant: SessionGrant
    depth: int


@dataclass
class Tally:
    trees: int = 0
    attempts: int = 0
    accepted: int = 0
    refused: int = 0
    deepest: int = 0
    violations: list[str] = field(default_factory=list)


def check_child(
    parent: Node, child: SessionGrant, depth: int, remaining: Money, root_max: int, now: datetime
) -> list[str]:
    bad: list[str] = []
    for pattern in child.allowed_services:
        for w in _witnesses(pattern):
            if _matches(pattern, w) and not any(_matches(p, w) for p in parent.grant.allowed_services):
                bad.append(f"service widened: {w} via {pattern} under {parent.grant.allowed_services}")
    if child.budget.currency != parent.grant.budget.currency or child.budget.amount > remaining.amount:
        bad.append(f"budget widened: {child.budget} > remaining {remaining}")
    if child.expires_at > parent.grant.expires_at:
        bad.append("expiry widened")
    if child.expires_at <= now:
        bad.append("child already expired")
    if depth > root_max or depth > parent.grant.max_depth:
        bad.append(f"depth {depth} accepted beyond limit {root_max}")
    if child.max_depth > parent.grant.max_depth:
        bad.append("max depth widened")
    if parent.grant.allowed_scopes is not None and (
        child.allowed_scopes is None or not set(child.allowed_scopes) <= set(parent.grant.allowed_scopes)
    ):
        bad.append("scopes widened")
    return bad


def run_tree(fn: Attenuate, rng: Random, tally: Tally) -> None:
    root = SessionGrant(
        allowed_services=[random_pattern(rng) for _ in range(rng.randint(1, 3))],
        budget=Money(amount=rng.randint(0, 10_000)),
        expires_at=T0 + timedelta(seconds=rng.randint(600, 4 * 3600)),
        max_depth=rng.choice([0, 1, 2, 3, 4, 5, 5, 5]),
        allowed_scopes=rng.choice([None, rng.sample(["read", "write", "admin"], rng.randint(0, 3))]),
    )
    level = [Node(root, 0)]
    nodes = 1
    for depth in range(1, MAX_TREE_DEPTH + 1):
        next_level: list[Node] = []
        for parent in level:
            for _ in range(rng.randint(1, 3)):
                if nodes >= 40:
                    break
                life = int((parent.grant.expires_at - T0).total_seconds())
                now = T0 + timedelta(seconds=rng.randint(0, life + 120))
                remaining = Money(amount=rng.randint(0, parent.grant.budget.amount))
                ask = random_ask(rng, parent.grant, remaining)
                tally.attempts += 1
                try:
                    child = fn(
                        parent.grant, parent_depth=parent.depth, ask=ask, now=now, parent_remaining=remaining
                    )
                except AttenuationError:
                    tally.refused += 1
                    continue
                tally.accepted += 1
                nodes += 1
                tally.deepest = max(tally.deepest, depth)
                tally.violations += check_child(parent, child, depth, remaining, root.max_depth, now)
                next_level.append(Node(child, depth))
        level = next_level
    tally.trees += 1


TALLY = Tally()


@settings(
    max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.randoms(use_true_random=True))
def test_random_delegation_trees_never_widen(rng: Random) -> None:
    run_tree(attenuate, rng, TALLY)
    assert not TALLY.violations, TALLY.violations[:3]


def test_report_tree_count() -> None:
    """Runs after the property (file order): prints and checks how much was explored."""
    print(
        f"\ndelegation trees: {TALLY.trees}, delegations tried: {TALLY.attempts}, "
        f"accepted: {TALLY.accepted}, refused: {TALLY.refused}, deepest accepted: {TALLY.deepest}, "
        f"widened grants found: {len(TALLY.violations)}"
    )
    assert TALLY.trees >= 1000
    assert TALLY.accepted > 1000 and TALLY.refused > 1000
    assert TALLY.deepest == MAX_TREE_DEPTH
    assert TALLY.violations == []


def _broken_attenuate(parent: SessionGrant, **kw: object) -> SessionGrant:
    """A plausible bug: containment that compares providers only (`cloud/r2` ⊆ `cloud/workers`)."""
    original = attenuation.pattern_contains

    def provider_only(outer: str, inner: str) -> bool:
        return outer == "*" or outer.split("/")[0] == inner.split("/")[0]

    attenuation.pattern_contains = provider_only
    try:
        return attenuate(parent, **kw)  # type: ignore[arg-type]
    finally:
        attenuation.pattern_contains = original


BROKEN = Tally()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.randoms(use_true_random=True))
def test_harness_runs_on_broken_variant(rng: Random) -> None:
    run_tree(_broken_attenuate, rng, BROKEN)


def test_harness_catches_the_broken_variant() -> None:
    print(f"\nbroken variant: {BROKEN.trees} trees, {len(BROKEN.violations)} widened grants detected")
    assert BROKEN.trees >= 300
    assert BROKEN.violations, "the harness failed to detect a deliberately broken containment check"
