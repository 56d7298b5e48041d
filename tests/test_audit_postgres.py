"""PostgresAuditStore against a real PostgreSQL server: the same contract as the SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from models.audit import AuditEvent
from models.money import Money
from models.secret import Secret
from providers.audit import AuditFilters, PostgresAuditStore, open_audit_store

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
CANARY = "canary-pg-31d0c4fe-never-stored"
ROOT = Path(__file__).resolve().parents[1]


def ev(n: int, **kw: object) -> AuditEvent:
    base: dict[str, object] = {
        "event_id": f"evt-{n}",
        "time": T0 + timedelta(minutes=n),
        "action": "charge.made",
        "principal_id": "pA",
        "agent_chain": ["agent:planner"],
        "provider": "cloud",
        "request_id": "req-1",
        "amount": Money(amount=1000 + n),
    }
    base.update(kw)
    return AuditEvent.model_validate(base)


def tamper(dsn: str, sql: str) -> None:
    """As a superuser with direct access would: triggers off for the session, then the edit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(sql)


def test_append_is_idempotent_and_queries_filter(postgres_db: str) -> None:
    store = open_audit_store(postgres_db)
    assert isinstance(store, PostgresAuditStore)
    assert store.append(ev(1, session_ids=["s1"], details={"token": CANARY, "s": Secret(CANARY)})) is True
    assert store.append(ev(1)) is False
    store.append(ev(2, principal_id="pB", agent_chain=["agent:planner", "agent:sub"], provider="db"))
    store.append(ev(3, action="credential.minted", credential_id="cred-1", request_id="req-2"))

    def ids(**kw: object) -> list[str]:
        return [r.event.event_id for r in store.query(AuditFilters.model_validate(kw))]

    assert ids() == ["evt-1", "evt-2", "evt-3"]
    assert ids(principal_id="pA") == ["evt-1", "evt-3"]
    assert ids(agent="agent:sub") == ["evt-2"]
    assert ids(session_id="s1") == ["evt-1"]
    assert ids(provider="db") == ["evt-2"]
    assert ids(since=T0 + timedelta(minutes=2)) == ["evt-2", "evt-3"]
    assert ids(request_id="req-2", action="credential.minted") == ["evt-3"]
    assert store.query()[0].event.details == {"s": "***", "token": "***"}
    with psycopg.connect(postgres_db) as conn:
        dump = json.dumps(conn.execute("SELECT * FROM audit_records").fetchall())
    assert CANARY not in dump
    assert store.verify().ok
    store.close()


def test_triggers_refuse_update_delete_and_truncate(postgres_db: str) -> None:
    store = PostgresAuditStore(postgres_db)
    store.append(ev(1))
    for sql in (
        "UPDATE audit_records SET action = 'x'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
    ):
        with (
            psycopg.connect(postgres_db, autocommit=True) as conn,
            pytest.raises(psycopg.errors.RaiseException),
        ):
            conn.execute(sql)
    assert store.verify().ok
    store.close()


def test_editing_or_deleting_a_row_is_found_at_that_row(postgres_db: str) -> None:
    store = PostgresAuditStore(postgres_db)
    for i in range(1, 7):
        store.append(ev(i))
    assert store.verify().ok and store.verify().records == 6
    tamper(
        postgres_db, "UPDATE audit_records SET event_json = replace(event_json, '1003', '3') WHERE seq = 3"
    )
    report = store.verify()
    assert (report.ok, report.first_broken_seq) == (False, 3)
    tamper(postgres_db, "DELETE FROM audit_records WHERE seq = 3")
    assert store.verify().first_broken_seq == 4
    store.close()


WRITER = """
import sys, time
from pathlib import Path
from datetime import UTC, datetime
from models.audit import AuditEvent
from providers.audit import PostgresAuditStore
dsn, w, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = PostgresAuditStore(dsn)
while not go.exists():
    time.sleep(0.005)
for i in range(30):
    e = AuditEvent(event_id=f"p{w}-{i}", time=datetime.now(UTC), action="charge.made")
    store.append(e)
    store.append(e)
"""


def test_concurrent_appends_from_processes_keep_one_chain(postgres_db: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, postgres_db, str(w), str(go)], cwd=ROOT)
        for w in range(3)
    ]
    go.touch()
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    with psycopg.connect(postgres_db) as conn:
        rows = conn.execute(
            "SELECT seq, event_id, prev_hash, hash FROM audit_records ORDER BY seq"
        ).fetchall()
    assert [r[0] for r in rows] == list(range(1, 91))
    assert len({r[1] for r in rows}) == 90
    assert [r[2] for r in rows[1:]] == [r[3] for r in rows[:-1]]
    assert PostgresAuditStore(postgres_db).verify().ok


def test_cli_uses_the_postgres_store_from_qm_audit_db(
    postgres_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from quartermaster.cli import main

    store = PostgresAuditStore(postgres_db)
    store.append(ev(1))
    store.append(ev(2, action="credential.minted", credential_id="cred-9"))
    store.close()
    monkeypatch.setenv("QM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("QM_AUDIT_DB", postgres_db)
    assert main(["audit", "trace", "req-1", "--json"]) == 0
    trace = json.loads(capsys.readouterr().out)
    assert [r["event"]["action"] for r in trace["records"]] == ["charge.made", "credential.minted"]
    assert trace["credential_ids"] == ["cred-9"]
    assert main(["audit", "verify"]) == 0
    assert capsys.readouterr().out.startswith("audit trail intact: 2 records")
    assert not list(tmp_path.glob("*.sqlite*"))  # the DSN named the whole store: no SQLite file
