"""SqliteAuditStore: append, idempotency, queries, secret stripping, the hash chain, concurrency."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from models.audit import AuditEvent
from models.money import Money
from models.secret import Secret
from providers.audit import AuditFilters, AuditStoreError, SqliteAuditStore

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CANARY = "canary-7f3a9e1b-do-not-store"
ROOT = Path(__file__).resolve().parents[1]


def ev(n: int, **kw: object) -> AuditEvent:
    base: dict[str, object] = {
        "event_id": f"evt-{n}",
        "time": T0 + timedelta(minutes=n),
        "action": "request.received",
        "principal_id": "palice0000000000000000",
        "agent_chain": ["agent:planner"],
        "provider": "cloud",
        "request_id": "req-1",
    }
    base.update(kw)
    return AuditEvent.model_validate(base)


@pytest.fixture
def store(tmp_path: Path) -> SqliteAuditStore:
    return SqliteAuditStore(tmp_path / "audit.sqlite")


def raw(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Run SQL with plain sqlite3, as an attacker with file access would (triggers dropped first)."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_records_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_records_no_delete")
        rows = conn.execute(sql, params).fetchall()
        conn.commit()
        return rows


def file_bytes(directory: Path) -> bytes:
    """Every byte SQLite left in the directory: main file, WAL and shared memory."""
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


# -- append and idempotency -------------------------------------------------------------------------
def test_append_stores_the_event_and_reads_it_back(store: SqliteAuditStore) -> None:
    event = ev(1, action="charge.made", amount=Money(amount=1500, currency="usd"), session_ids=["s1"])
    assert store.append(event) is True
    [record] = store.query()
    assert record.seq == 1
    assert record.prev_hash == "0" * 64
    assert record.event == event
    (stored_json,) = raw(store.path, "SELECT event_json FROM audit_records WHERE seq = 1")[0]
    assert '"amount":{"amount":1500,"currency":"usd"}' in str(stored_json)


def test_duplicate_event_id_is_ignored_and_first_write_wins(store: SqliteAuditStore) -> None:
    assert store.append(ev(1, reason="first")) is True
    assert store.append(ev(1, reason="first")) is False
    assert store.append(ev(1, reason="a retry with other content")) is False
    rows = raw(store.path, "SELECT seq, event_id FROM audit_records")
    assert rows == [(1, "evt-1")]
    assert store.query()[0].event.reason == "first"
    assert store.verify().ok


def test_time_is_stored_in_utc_and_naive_time_is_refused(store: SqliteAuditStore) -> None:
    plus2 = datetime(2026, 5, 1, 14, 0, tzinfo=UTC).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    )
    store.append(ev(1, time=plus2))
    assert raw(store.path, "SELECT json_extract(event_json, '$.time') FROM audit_records") == [
        ("2026-05-01T14:00:00Z",)
    ]
    with pytest.raises(AuditStoreError):
        store.append(ev(2, time=datetime(2026, 5, 1, 12, 0)))
    assert len(store.query()) == 1


# -- secrets ---------------------------------------------------------------------------------------
def test_secret_looking_details_are_redacted_before_storage(store: SqliteAuditStore, tmp_path: Path) -> None:
    store.append(
        ev(
            1,
            details={
                "secret_obj": Secret(CANARY),
                "marker": {"__qm_secret__": CANARY},
                "nested": [{"token": CANARY}, {"note": "kept"}],
                "stripe_key": "sk_live_" + CANARY,
                "sealed": "qmsealed:s1:" + CANARY,
                "plan": "pro",
            },
        )
    )
    details = store.query()[0].event.details
    assert details == {
        "secret_obj": "***",
        "marker": "***",
        "nested": [{"token": "***"}, {"note": "kept"}],
        "stripe_key": "***",
        "sealed": "***",
        "plan": "pro",
    }
    store.close()
    assert file_bytes(tmp_path).count(CANARY.encode()) == 0
    assert store.path.exists()


# -- queries ---------------------------------------------------------------------------------------
def test_query_filters_select_exactly_the_matching_events(store: SqliteAuditStore) -> None:
    store.append(
        ev(1, principal_id="pA", agent_chain=["agent:planner"], session_ids=["s1"], provider="cloud")
    )
    store.append(
        ev(
            2,
            principal_id="pA",
            agent_chain=["agent:planner", "agent:sub"],
            session_ids=["s2"],
            provider="db",
        )
    )
    store.append(ev(3, principal_id="pB", agent_chain=["agent:other"], session_ids=["s3"], provider="cloud"))
    store.append(ev(4, principal_id="pA", action="charge.made", provider="cloud", request_id="req-2"))

    def ids(**kw: object) -> list[str]:
        return [r.event.event_id for r in store.query(AuditFilters.model_validate(kw))]

    assert ids() == ["evt-1", "evt-2", "evt-3", "evt-4"]
    assert ids(principal_id="pA") == ["evt-1", "evt-2", "evt-4"]
    assert ids(agent="agent:sub") == ["evt-2"]
    assert ids(agent="agent:planner") == ["evt-1", "evt-2", "evt-4"]
    assert ids(session_id="s3") == ["evt-3"]
    assert ids(provider="cloud", principal_id="pA") == ["evt-1", "evt-4"]
    assert ids(since=T0 + timedelta(minutes=3)) == ["evt-3", "evt-4"]
    assert ids(until=T0 + timedelta(minutes=1)) == ["evt-1"]
    assert ids(request_id="req-2") == ["evt-4"]
    assert ids(action="charge.made") == ["evt-4"]
    assert ids(limit=2) == ["evt-1", "evt-2"]
    assert ids(principal_id="nobody") == []
    with pytest.raises(ValueError):
        AuditFilters(since=datetime(2026, 5, 1))


# -- the hash chain --------------------------------------------------------------------------------
def fill(store: SqliteAuditStore, n: int = 6) -> None:
    for i in range(1, n + 1):
        store.append(ev(i, action="charge.made", amount=Money(amount=1000 + i, currency="usd")))


def test_untouched_store_verifies(store: SqliteAuditStore) -> None:
    fill(store)
    report = store.verify()
    assert report.ok and report.records == 6 and report.first_broken_seq is None
    assert report.head_seq == 6
    assert report.head_hash == raw(store.path, "SELECT hash FROM audit_records WHERE seq = 6")[0][0]


def test_empty_store_verifies(store: SqliteAuditStore) -> None:
    report = store.verify()
    assert report.ok and report.records == 0


def test_triggers_refuse_update_and_delete(store: SqliteAuditStore) -> None:
    fill(store, 2)
    with closing(sqlite3.connect(store.path)) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit_records SET event_json = '{}' WHERE seq = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_records WHERE seq = 1")


def test_editing_one_rows_json_fails_verify_at_that_row(store: SqliteAuditStore) -> None:
    fill(store)
    raw(
        store.path,
        "UPDATE audit_records SET event_json = replace(event_json, '\"amount\":1003', '\"amount\":3')"
        " WHERE seq = 3",
    )
    assert '"amount":3,' in str(raw(store.path, "SELECT event_json FROM audit_records WHERE seq = 3")[0][0])
    report = SqliteAuditStore(store.path).verify()
    assert not report.ok
    assert report.first_broken_seq == 3
    assert report.records == 3


def test_editing_json_and_its_hash_fails_at_the_next_row(store: SqliteAuditStore) -> None:
    fill(store)
    from providers.audit import chain_hash

    prev, text = raw(store.path, "SELECT prev_hash, event_json FROM audit_records WHERE seq = 3")[0]
    forged = str(text).replace('"amount":1003', '"amount":3')
    raw(
        store.path,
        "UPDATE audit_records SET event_json = ?, hash = ? WHERE seq = 3",
        (forged, chain_hash(str(prev), forged)),
    )
    assert SqliteAuditStore(store.path).verify().first_broken_seq == 4


def test_editing_an_indexed_column_fails_at_that_row(store: SqliteAuditStore) -> None:
    fill(store)
    raw(store.path, "UPDATE audit_records SET principal_id = 'pSomeoneElse' WHERE seq = 2")
    report = SqliteAuditStore(store.path).verify()
    assert (report.ok, report.first_broken_seq) == (False, 2)


def test_deleting_one_row_fails_verify_at_the_next(store: SqliteAuditStore) -> None:
    fill(store)
    raw(store.path, "DELETE FROM audit_records WHERE seq = 4")
    report = SqliteAuditStore(store.path).verify()
    assert (report.ok, report.first_broken_seq) == (False, 5)


def test_deleting_the_first_row_fails_at_the_second(store: SqliteAuditStore) -> None:
    fill(store)
    raw(store.path, "DELETE FROM audit_records WHERE seq = 1")
    assert SqliteAuditStore(store.path).verify().first_broken_seq == 2


def test_truncating_the_tail_is_detected_and_stays_detected(store: SqliteAuditStore) -> None:
    fill(store)
    raw(store.path, "DELETE FROM audit_records WHERE seq >= 5")
    report = SqliteAuditStore(store.path).verify()
    assert (report.ok, report.first_broken_seq) == (False, 5)
    # a later append chains from the head pointer, so the gap stays visible
    store.append(ev(99))
    assert SqliteAuditStore(store.path).verify().first_broken_seq == 7


# -- concurrency -----------------------------------------------------------------------------------
def test_concurrent_appends_from_threads_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.sqlite"
    SqliteAuditStore(path).close()
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    # one store per writer, like separate workers (each unit of work opens its own connection); opened
    # before the writers start, so the appends are what runs at once
    stores = [SqliteAuditStore(path) for _ in range(4)]

    def writer(w: int) -> None:
        s = stores[w]
        try:
            start.wait(timeout=60)
            for i in range(50):
                s.append(ev(w * 1000 + i, event_id=f"t{w}-{i}"))
                s.append(ev(w * 1000 + i, event_id=f"t{w}-{i}"))  # a retry: must not duplicate
        except BaseException as exc:
            start.abort()  # the other writers stop waiting: the test fails with this error, not a hang
            errors.append(exc)
        finally:
            s.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    rows = raw(path, "SELECT seq, event_id FROM audit_records ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, 201))
    assert sorted(str(r[1]) for r in rows) == sorted(f"t{w}-{i}" for w in range(4) for i in range(50))
    report = SqliteAuditStore(path).verify()
    assert report.ok and report.records == 200


WRITER = """
import sys, time
from pathlib import Path
from datetime import UTC, datetime
from models.audit import AuditEvent
from providers.audit import SqliteAuditStore
path, w, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
store = SqliteAuditStore(path)
while not go.exists():
    time.sleep(0.005)
for i in range(40):
    e = AuditEvent(event_id=f"p{w}-{i}", time=datetime.now(UTC), action="charge.made")
    store.append(e)
    store.append(e)
"""


def test_concurrent_appends_from_processes_keep_one_chain(tmp_path: Path) -> None:
    path, go = tmp_path / "audit.sqlite", tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(go)], cwd=ROOT)
        for w in range(3)
    ]
    go.touch()  # all start appending at once
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    rows = raw(path, "SELECT seq, event_id, prev_hash, hash FROM audit_records ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, 121))
    assert len({r[1] for r in rows}) == 120
    # one chain: every record links to the one before it, none shares a predecessor
    assert [r[2] for r in rows[1:]] == [r[3] for r in rows[:-1]]
    assert SqliteAuditStore(path).verify().ok
