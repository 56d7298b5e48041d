"""The API's reuse of entity answers (`SessionActivities._cached`): good answers only, bounded."""

from __future__ import annotations

import pytest

import activities.sessions as sessions
from activities.sessions import SessionActivities


def _cache(ttl: float) -> SessionActivities:
    acts = SessionActivities.__new__(SessionActivities)  # only the cache's two fields are used here
    acts._entity_ttl = ttl
    acts._entities = {}
    return acts


async def test_good_answers_are_reused_refusals_are_read_again() -> None:
    acts, loads = _cache(30.0), {"ok": 0, "refused": 0}

    async def load(kind: str) -> str:
        loads[kind] += 1
        return kind

    for _ in range(3):
        assert await acts._cached("a", lambda: load("ok"), lambda v: v == "ok") == "ok"
        assert await acts._cached("b", lambda: load("refused"), lambda v: v == "ok") == "refused"
    assert loads == {"ok": 1, "refused": 3}
    assert await _cache(0.0)._cached("a", lambda: load("ok"), lambda v: True) == "ok"  # the worker's
    assert loads["ok"] == 2


async def test_the_cache_stays_bounded_dropping_the_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "MAX_CACHED_ENTITIES", 50)
    acts = _cache(30.0)

    async def load() -> str:
        return "ok"

    for i in range(200):  # all fresh: none is stale, so the oldest go
        await acts._cached(f"k{i}", load, lambda v: True)
    assert len(acts._entities) == 50
    assert "k0" not in acts._entities and "k199" in acts._entities
