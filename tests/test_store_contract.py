"""The store's contract, run against both backends: SQLite (a file) and PostgreSQL (a real server).

Every concern's interface is exercised through `providers.store.open_store`, the way the worker and
the API use it; concurrency cases use several threads (SQLite) or connections (PostgreSQL) at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest

from models.approval import ApprovalRequest
from models.audit import AuditEvent
from models.secret import Secret
from providers.audit import AuditFilters
from providers.store import LATEST, InvalidCursorError, Store, open_store, token_hash
from providers.store.interfaces import FreezeStore, Standing
from providers.store.migrations import migrate, schema_version


class Rot13Sealer:
    """A visible stand-in for the AES-GCM SecretBox: what is stored is never the plaintext."""

    def seal(self, plaintext: str) -> str:
        return "sealed:" + plaintext[::-1]

    def unseal(self, sealed: str) -> str:
        assert sealed.startswith("sealed:")
        return sealed.removeprefix("sealed:")[::-1]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "quartermaster.sqlite")
    return str(request.getfixturevalue("postgres_db"))


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url, sealer=Rot13Sealer())
    yield opened
    opened.close()


def raw_rows(store: Store, sql: str) -> list[tuple[object, ...]]:
    return store.db.run_sync(lambda tx: tx.execute(sql))


# -- schema ----------------------------------------------------------------------------------------
def test_an_empty_database_is_migrated_to_the_latest_version(store: Store, store_url: str) -> None:
    assert store.db.run_sync(schema_version) == LATEST
    # opening again (a second replica starting) changes nothing
    again = open_store(store_url)
    assert again.db.run_sync(schema_version) == LATEST
    again.close()
    assert migrate(store.db) == LATEST


# -- connections, OAuth state, terms ---------------------------------------------------------------
async def test_connections_are_sealed_at_rest_and_upserted(store: Store) -> None:
    c = store.connections
    assert await c.get_connection(principal_id="p1", provider="cloud") is None
    await c.put_connection(
        principal_id="p1",
        provider="cloud",
        account_id="acct-1",
        link_action="created",
        credential=Secret("cred-one"),
        scopes=["a", "b"],
    )
    got = await c.get_connection(principal_id="p1", provider="cloud")
    assert got is not None
    assert (got.account_id, got.link_action, got.credential.reveal(), got.scopes) == (
        "acct-1",
        "created",
        "cred-one",
        ["a", "b"],
    )
    assert raw_rows(store, "SELECT credential FROM connections") == [("sealed:eno-derc",)]
    await c.put_connection(
        principal_id="p1",
        provider="cloud",
        account_id="acct-1",
        link_action="linked",
        credential=Secret("cred-two"),
        scopes=[],
    )
    got = await c.get_connection(principal_id="p1", provider="cloud")
    assert got is not None and got.credential.reveal() == "cred-two" and got.link_action == "linked"
    assert raw_rows(store, "SELECT count(*) FROM connections") == [(1,)]
    assert await c.get_connection(principal_id="p1", provider="db") is None


async def test_a_store_without_a_sealer_refuses_credentials(store_url: str) -> None:
    bare = open_store(store_url)
    with pytest.raises(RuntimeError, match="seal key"):
        await bare.connections.put_connection(
            principal_id="p", provider="x", account_id="a", link_action="l", credential=Secret("c"), scopes=[]
        )
    bare.close()


async def test_oauth_state_first_write_wins(store: Store) -> None:
    o = store.oauth
    await o.put_oauth_pending(
        state="s1", principal_id="p", provider="db", verifier=Secret("v1"), redirect_uri="http://cb"
    )
    await o.put_oauth_pending(
        state="s1", principal_id="p", provider="db", verifier=Secret("v2"), redirect_uri="http://cb"
    )
    pending = await o.get_oauth_pending("s1")
    assert pending is not None
    assert (pending.principal_id, pending.provider, pending.verifier.reveal(), pending.redirect_uri) == (
        "p",
        "db",
        "v1",
        "http://cb",
    )
    assert await o.get_oauth_pending("s2") is None
    assert "v1" not in str(raw_rows(store, "SELECT verifier FROM oauth_pending"))


async def test_terms_acceptance_is_recorded_once_per_version(store: Store) -> None:
    t = store.terms
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert await t.accepted_terms(principal_id="p", provider="cloud", terms_version="v1") is None
    await t.record_terms(
        principal_id="p", provider="cloud", terms_version="v1", accepted_at=at, approval_id="a1"
    )
    await t.record_terms(
        principal_id="p",
        provider="cloud",
        terms_version="v1",
        accepted_at=at + timedelta(days=1),
        approval_id="a2",
    )
    got = await t.accepted_terms(principal_id="p", provider="cloud", terms_version="v1")
    assert got is not None and (got.accepted_at, got.approval_id) == (at.isoformat(), "a1")
    assert await t.accepted_terms(principal_id="p", provider="cloud", terms_version="v2") is None


# -- replay guard ----------------------------------------------------------------------------------
async def test_single_use_tokens_are_consumed_once_even_when_raced(store: Store) -> None:
    r = store.replay
    exp = int(datetime.now(UTC).timestamp()) + 600
    results = await asyncio.gather(*(r.consume("iss", "jti-race", exp, f"use-{i}") for i in range(8)))
    assert sorted(results) == [False] * 7 + [True]
    winner = f"use-{results.index(True)}"
    assert await r.consume("iss", "jti-race", exp, winner)  # the same use, retried
    assert not await r.consume("iss", "jti-race", exp, "use-other")
    assert await r.consume("other-iss", "jti-race", exp, "use-other")  # ids are per issuer


async def test_retired_tokens_stay_retired_and_expired_records_are_purged(store: Store) -> None:
    r = store.replay
    exp = int(datetime.now(UTC).timestamp()) + 600
    assert not await r.is_retired("iss", "j1")
    await r.retire("iss", "j1", exp)
    await r.retire("iss", "j1", exp)
    assert await r.is_retired("iss", "j1")
    assert await r.consume("iss", "j2", exp, "u")
    await r.retire("iss", "j2", exp)  # a consumed token can still be retired
    assert await r.is_retired("iss", "j2") and not await r.consume("iss", "j2", exp, "u")
    await r.consume("iss", "old", int(datetime.now(UTC).timestamp()) - 3600, "u")
    await r.consume("iss", "j3", exp, "u")  # every consume purges what expired
    assert raw_rows(store, "SELECT count(*) FROM identity_jti WHERE jti = 'old'") == [(0,)]


# -- webhook inbox ---------------------------------------------------------------------------------
async def test_webhook_events_and_readiness_are_recorded_once(store: Store) -> None:
    w = store.webhooks
    assert not await w.seen("evt_1") and not await w.fired("cus_1", "seti_1")
    await w.record_event("evt_0", "customer.created", "ignored")
    assert await w.seen("evt_0")
    assert await w.record_fired("cus_1", "seti_1", "evt_1", "setup_intent.succeeded")
    assert not await w.record_fired("cus_1", "seti_1", "evt_2", "checkout.session.completed")
    assert await w.fired("cus_1", "seti_1") and await w.seen("evt_1") and await w.seen("evt_2")
    assert raw_rows(store, "SELECT id, outcome FROM webhook_events ORDER BY id") == [
        ("evt_0", "ignored"),
        ("evt_1", "handled"),
        ("evt_2", "already_handled"),
    ]


# -- human logins ----------------------------------------------------------------------------------
KEY = b"login-code-key"


def code_hash(code: str) -> str:
    return hmac.new(KEY, code.encode(), hashlib.sha256).hexdigest()


async def test_a_login_code_is_single_use(store: Store) -> None:
    lg = store.logins
    soon = datetime.now(UTC) + timedelta(minutes=10)
    await lg.start_login(
        login_id="l1", principal_id="p", email="a@x", code_hash=code_hash("123456"), expires_at=soon
    )
    ok = await lg.check_login_code(login_id="l1", code_hash=code_hash("123456"))
    assert (ok.outcome, ok.principal_id, ok.email) == ("ok", "p", "a@x")
    assert (await lg.check_login_code(login_id="l1", code_hash=code_hash("123456"))).outcome == "unknown"
    assert (await lg.check_login_code(login_id="nope", code_hash=code_hash("1"))).outcome == "unknown"
    assert "123456" not in str(raw_rows(store, "SELECT * FROM login_codes"))


async def test_wrong_codes_use_up_the_tries_and_expiry_is_enforced(store: Store) -> None:
    lg = store.logins
    soon = datetime.now(UTC) + timedelta(minutes=10)
    await lg.start_login(
        login_id="l2",
        principal_id="p",
        email="a@x",
        code_hash=code_hash("good"),
        expires_at=soon,
        max_tries=3,
    )
    outcomes = [(await lg.check_login_code(login_id="l2", code_hash=code_hash("bad"))) for _ in range(3)]
    assert [(o.outcome, o.tries_left) for o in outcomes] == [
        ("wrong_code", 2),
        ("wrong_code", 1),
        ("too_many_tries", 0),
    ]
    # burnt: even the right code is refused now
    assert (await lg.check_login_code(login_id="l2", code_hash=code_hash("good"))).outcome == "too_many_tries"
    past = datetime.now(UTC) - timedelta(seconds=1)
    await lg.start_login(
        login_id="l3", principal_id="p", email="a@x", code_hash=code_hash("c"), expires_at=past
    )
    assert (await lg.check_login_code(login_id="l3", code_hash=code_hash("c"))).outcome == "expired"


async def test_concurrent_guesses_cannot_exceed_the_tries(store: Store) -> None:
    lg = store.logins
    soon = datetime.now(UTC) + timedelta(minutes=10)
    await lg.start_login(
        login_id="l4",
        principal_id="p",
        email="a@x",
        code_hash=code_hash("good"),
        expires_at=soon,
        max_tries=3,
    )
    guesses = await asyncio.gather(
        *(lg.check_login_code(login_id="l4", code_hash=code_hash(f"bad{i}")) for i in range(10))
    )
    assert sum(g.outcome == "wrong_code" for g in guesses) == 2
    assert raw_rows(store, "SELECT tries FROM login_codes WHERE login_id = 'l4'") == [(3,)]


async def test_login_tokens_are_stored_hashed_and_can_be_revoked(store: Store) -> None:
    lg = store.logins
    later = datetime.now(UTC) + timedelta(days=30)
    t1, t2, t3 = "qmh_one", "qmh_two", "qmh_three"
    for t in (t1, t2):
        await lg.issue_token(token_hash=token_hash(t), principal_id="p", email="a@x", expires_at=later)
    await lg.issue_token(token_hash=token_hash(t3), principal_id="q", email="b@x", expires_at=later)
    found = await lg.find_token(token_hash(t1))
    assert found is not None and (found.principal_id, found.email) == ("p", "a@x")
    assert abs((found.expires_at - later).total_seconds()) < 1
    assert "qmh_one" not in str(raw_rows(store, "SELECT * FROM login_tokens"))
    assert await lg.find_token(token_hash("qmh_unknown")) is None
    assert await lg.revoke_token(token_hash(t1)) and not await lg.revoke_token(token_hash(t1))
    assert await lg.find_token(token_hash(t1)) is None
    assert await lg.revoke_principal_tokens("p") == 1
    assert await lg.find_token(token_hash(t2)) is None and await lg.find_token(token_hash(t3)) is not None
    gone = datetime.now(UTC) - timedelta(seconds=1)
    await lg.issue_token(token_hash=token_hash("qmh_old"), principal_id="p", email="a@x", expires_at=gone)
    assert await lg.find_token(token_hash("qmh_old")) is None


# -- freezes and session revocations ---------------------------------------------------------------
async def test_freezes_are_durable_and_idempotent(store: Store, store_url: str) -> None:
    f = store.freezes
    assert await f.agent_freeze(principal_id="p", agent="planner") is None
    await f.freeze_agent(principal_id="p", agent="planner", reason="principal froze it")
    first = await f.agent_freeze(principal_id="p", agent="planner")
    await f.freeze_agent(principal_id="p", agent="planner", reason="again")
    again = await f.agent_freeze(principal_id="p", agent="planner")
    assert first is not None and again == first and first.reason == "principal froze it"
    assert await f.agent_freeze(principal_id="p", agent="builder") is None
    assert await f.agent_freeze(principal_id="q", agent="planner") is None
    # another replica (a new connection) sees it
    other = open_store(store_url)
    assert await other.freezes.agent_freeze(principal_id="p", agent="planner") == first
    other.close()
    assert await f.unfreeze_agent(principal_id="p", agent="planner")
    assert not await f.unfreeze_agent(principal_id="p", agent="planner")
    assert await f.agent_freeze(principal_id="p", agent="planner") is None


async def test_session_revocations_are_permanent(store: Store) -> None:
    f = store.freezes
    assert await f.session_revocation("s1") is None
    await f.revoke_session(session_id="s1", principal_id="p", reason="kill switch")
    await f.revoke_session(session_id="s1", principal_id="p", reason="later")
    rev = await f.session_revocation("s1")
    assert rev is not None and (rev.principal_id, rev.reason) == ("p", "kill switch")
    assert await f.session_revocation("s2") is None


async def _standing_is_exact(f: FreezeStore) -> bool:
    """The one read every agent call makes: exactly the revoked sessions of the chain (an ancestor's
    too) and the frozen agents of this principal, in the order asked; another principal's freeze of the
    same agent name is not it."""
    empty = await f.standing(principal_id="p", session_ids=["s1", "s2"], agents=["planner", "builder"])
    await f.revoke_session(session_id="s1", principal_id="p")  # the root of the chain
    await f.freeze_agent(principal_id="p", agent="builder")
    await f.freeze_agent(principal_id="q", agent="planner")
    got = await f.standing(principal_id="p", session_ids=["s1", "s2"], agents=["planner", "builder"])
    none = await f.standing(principal_id="p", session_ids=[], agents=[])
    await f.unfreeze_agent(principal_id="p", agent="builder")
    after = await f.standing(principal_id="p", session_ids=["s1"], agents=["builder"])
    return [(r.revoked_sessions, r.frozen_agents) for r in (empty, got, none, after)] == [
        ([], []),
        (["s1"], ["builder"]),
        ([], []),
        (["s1"], []),
    ]


class _LeafOnly:
    """Broken on purpose: checks only the leaf session and ignores whose agent is frozen."""

    def __init__(self, inner: FreezeStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def standing(self, *, principal_id: str, session_ids: list[str], agents: list[str]) -> Standing:
        revoked = [s for s in session_ids[-1:] if await self._inner.session_revocation(s)]
        frozen = []
        for agent in agents:
            for who in ("p", "q"):
                if await self._inner.agent_freeze(principal_id=who, agent=agent):
                    frozen.append(agent)
                    break
        return Standing(revoked_sessions=revoked, frozen_agents=frozen)


async def test_standing_reads_revocations_and_freezes_of_a_whole_chain(store: Store, store_url: str) -> None:
    assert await _standing_is_exact(store.freezes)
    # the same check catches a reader that looks only at the leaf session and at any principal's freezes
    other = open_store(store_url)
    try:
        for agent, principal in (("builder", "p"), ("planner", "q")):
            await other.freezes.unfreeze_agent(principal_id=principal, agent=agent)
        assert not await _standing_is_exact(cast(FreezeStore, _LeafOnly(other.freezes)))
    finally:
        other.close()


async def test_a_batch_of_audit_events_is_appended_once_in_order(store: Store) -> None:
    now = datetime.now(UTC)
    events = [
        AuditEvent(event_id=f"b{i}", time=now, action="charge.made", principal_id="p") for i in range(4)
    ]
    assert store.audit.append_many(events[:2]) == [True, True]
    assert store.audit.append_many(events) == [False, False, True, True]
    assert [r.event.event_id for r in store.audit.query()] == ["b0", "b1", "b2", "b3"]
    assert store.audit.verify().ok


# -- audit trail (the same store) ------------------------------------------------------------------
def test_the_audit_trail_lives_in_the_store(store: Store) -> None:
    now = datetime.now(UTC)
    events = [
        AuditEvent(event_id=f"e{i}", time=now, action="charge.made", principal_id="p", request_id=f"r{i % 2}")
        for i in range(5)
    ]
    assert all(store.audit.append(e) for e in events)
    assert not store.audit.append(events[0])
    assert [r.event.event_id for r in store.audit.query(AuditFilters(request_id="r1"))] == ["e1", "e3"]
    report = store.audit.verify()
    assert report.ok and report.records == 5


# -- approval page sessions ------------------------------------------------------------------------
async def test_a_page_session_is_found_by_its_hash_until_it_ends_or_expires(store: Store) -> None:
    p = store.pages
    soon = datetime.now(UTC) + timedelta(minutes=15)
    await p.create_session(
        sid_hash="h-login", principal_id="p", email="a@x", approval_id=None, sealed_link=None, expires_at=soon
    )
    got = await p.get_session("h-login")
    assert got is not None and (got.principal_id, got.email, got.approval_id, got.sealed_link) == (
        "p",
        "a@x",
        None,
        None,
    )
    assert abs((got.expires_at - soon).total_seconds()) < 1
    assert await p.get_session("h-other") is None
    await p.end_session("h-login")
    assert await p.get_session("h-login") is None
    past = datetime.now(UTC) - timedelta(seconds=1)
    await p.create_session(
        sid_hash="h-old", principal_id="p", email="a@x", approval_id=None, sealed_link=None, expires_at=past
    )
    assert await p.get_session("h-old") is None


async def test_an_approval_link_opens_one_session_even_when_raced(store: Store) -> None:
    p = store.pages
    soon = datetime.now(UTC) + timedelta(minutes=15)
    assert not await p.link_used("link-1")

    async def open_once(i: int) -> bool:
        return await p.open_link_session(
            link_hash="link-1",
            sid_hash=f"h{i}",
            principal_id="p",
            email="a@x",
            approval_id="provision-x.terms",
            sealed_link="sealed-token",
            expires_at=soon,
        )

    won = await asyncio.gather(*(open_once(i) for i in range(6)))
    assert sorted(won) == [False] * 5 + [True]
    assert await p.link_used("link-1")
    winner = won.index(True)
    got = await p.get_session(f"h{winner}")
    assert got is not None and (got.approval_id, got.sealed_link) == ("provision-x.terms", "sealed-token")
    # the losers created no session
    assert [await p.get_session(f"h{i}") for i in range(6) if i != winner] == [None] * 5


async def test_one_decision_per_approval_through_the_pages(store: Store) -> None:
    p = store.pages
    claims = await asyncio.gather(*(p.claim_decision(approval_id="ap", sid_hash=f"s{i}") for i in range(5)))
    assert sorted(claims) == [False] * 4 + [True]
    await p.release_decision("ap")  # the workflow refused it (a mistyped code): the human may retry
    assert await p.claim_decision(approval_id="ap", sid_hash="s9")
    assert not await p.claim_decision(approval_id="ap", sid_hash="s1")


# -- the published key set -------------------------------------------------------------------------
async def test_the_key_set_is_published_once_and_replaced_by_compare_and_set(store: Store) -> None:
    k = store.keys
    assert await k.published_keys() is None
    first = {"assertion": [["qm1", "fp1"]]}
    raced = await asyncio.gather(
        *(k.publish_keys(fingerprints=first, publisher=f"worker {i}", replaces=0) for i in range(4))
    )
    assert sorted(raced) == [False] * 3 + [True]
    got = await k.published_keys()
    assert got is not None and got.version == 1 and got.fingerprints == first
    rotated = {"assertion": [["qm1", "fp1"], ["qm2", "fp2"]]}
    assert not await k.publish_keys(fingerprints=rotated, publisher="api", replaces=7)  # stale version
    assert await k.publish_keys(fingerprints=rotated, publisher="api 1@h", replaces=1)
    got = await k.published_keys()
    assert got is not None and (got.version, got.fingerprints, got.publisher) == (2, rotated, "api 1@h")


# -- the pending-approvals read model ------------------------------------------------------------
def _approval(
    n: int, principal: str, *, at: datetime, ttl: timedelta = timedelta(hours=1)
) -> ApprovalRequest:
    return ApprovalRequest(
        approval_id=f"provision-{principal}-r{n}.terms",
        kind="terms",
        workflow_id=f"provision-{principal}-r{n}",
        principal_id=principal,
        summary=f"accept the terms ({n})",
        details={"checkout_url": f"https://checkout.example/secret-{principal}-{n}"},
        requested_at=at,
        expires_at=at + ttl,
    )


async def test_pending_approvals_are_paged_per_principal_and_sealed(store: Store) -> None:
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    now = t0 + timedelta(minutes=30)
    # 250 for alice (some share a timestamp, so the cursor must break ties), 3 for bob
    for n in range(250):
        await store.approvals.open_approval(_approval(n, "alice", at=t0 + timedelta(seconds=n // 3)))
    for n in range(3):
        await store.approvals.open_approval(_approval(n, "bob", at=t0))
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.approvals.pending("alice", cursor=cursor, limit=100, now=now)
        seen += [a.approval_id for a in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert sorted(seen) == sorted(f"provision-alice-r{n}.terms" for n in range(250))
    assert len(seen) == len(set(seen))
    bob = await store.approvals.pending("bob", now=now)
    assert [a.principal_id for a in bob.items] == ["bob"] * 3
    assert bob.items[0].details["checkout_url"].startswith("https://checkout.example/secret-bob")
    assert (await store.approvals.pending("mallory", now=now)).items == []
    # what the database holds: no summary, no URL in the clear
    for (blob,) in raw_rows(store, "SELECT request FROM pending_approvals"):
        assert "checkout.example" not in str(blob) and "accept the terms" not in str(blob)


async def test_a_closed_or_expired_approval_is_not_pending_and_stays_closed(store: Store) -> None:
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    a, b = _approval(1, "carol", at=t0), _approval(2, "carol", at=t0, ttl=timedelta(minutes=5))
    await store.approvals.open_approval(a)
    await store.approvals.open_approval(a)  # a retried notice: still one row
    await store.approvals.open_approval(b)
    assert await store.approvals.waiting(a.workflow_id) is True
    assert await store.approvals.waiting("provision-carol-r9") is False
    many = [f"provision-carol-r{n}" for n in range(100, 1300)]  # more ids than one query takes
    assert await store.approvals.waiting_among([*many, a.workflow_id, a.workflow_id, b.workflow_id]) == {
        a.workflow_id,
        b.workflow_id,
    }
    now = t0 + timedelta(minutes=1)
    assert [x.approval_id for x in (await store.approvals.pending("carol", now=now)).items] == [
        a.approval_id,
        b.approval_id,
    ]
    assert await store.approvals.close_approval(a.approval_id) is True
    assert await store.approvals.close_approval(a.approval_id) is False  # a retried close
    await store.approvals.open_approval(a)  # a late retry of the notice cannot reopen it
    assert await store.approvals.waiting(a.workflow_id) is False
    assert await store.approvals.waiting_among([a.workflow_id, b.workflow_id]) == {b.workflow_id}
    later = t0 + timedelta(minutes=10)
    assert (await store.approvals.pending("carol", now=now)).items == [b]
    assert (await store.approvals.pending("carol", now=later)).items == []  # b expired


async def test_a_malformed_cursor_is_refused(store: Store) -> None:
    for bad in ("not base64 json!", "WzEsMl0", "e30"):
        with pytest.raises(InvalidCursorError):
            await store.approvals.pending("alice", cursor=bad)
