"""Migrations from the previous version: the per-host SQLite files of the last release (audit,
connections, identity replay, webhooks) and a PostgreSQL audit database (`QM_AUDIT_DB`), brought to
the current schema on open with every row kept and the audit chain still verifying."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from models.audit import AuditEvent
from providers.audit import SqlAuditStore
from providers.store import LATEST, PostgresDatabase, SqliteDatabase, open_store
from providers.store.identity import SqlFreezes
from providers.store.migrations import AUDIT_V1_POSTGRES, migrate, schema_version
from tests.test_store_contract import Rot13Sealer

#: the schemas the per-host files of the previous release were created with (verbatim)
LEGACY_CONNECTIONS = """
CREATE TABLE IF NOT EXISTS connections (
  principal_id TEXT NOT NULL, provider TEXT NOT NULL, account_id TEXT NOT NULL,
  link_action TEXT NOT NULL, credential TEXT NOT NULL, scopes TEXT NOT NULL, updated_at TEXT NOT NULL,
  PRIMARY KEY (principal_id, provider));
CREATE TABLE IF NOT EXISTS oauth_pending (
  state TEXT PRIMARY KEY, principal_id TEXT NOT NULL, provider TEXT NOT NULL,
  verifier TEXT NOT NULL, redirect_uri TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS terms_acceptances (
  principal_id TEXT NOT NULL, provider TEXT NOT NULL, terms_version TEXT NOT NULL,
  accepted_at TEXT NOT NULL, approval_id TEXT NOT NULL,
  PRIMARY KEY (principal_id, provider, terms_version));
"""
LEGACY_REPLAY = (
    "CREATE TABLE IF NOT EXISTS jti (issuer TEXT NOT NULL, jti TEXT NOT NULL,"
    " exp INTEGER NOT NULL, state TEXT NOT NULL, use_id TEXT, PRIMARY KEY (issuer, jti))"
)
LEGACY_WEBHOOKS = """
CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY, type TEXT NOT NULL, outcome TEXT NOT NULL,
                                   received_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ready (customer TEXT NOT NULL, setup_intent TEXT NOT NULL,
                                  event_id TEXT NOT NULL, fired_at INTEGER NOT NULL,
                                  PRIMARY KEY (customer, setup_intent));
"""
EXP = 4_000_000_000


def events(n: int) -> list[AuditEvent]:
    now = datetime.now(UTC)
    return [
        AuditEvent(event_id=f"old-{i}", time=now, action="charge.made", principal_id="p") for i in range(n)
    ]


def legacy_data_dir(data: Path) -> None:
    """A data directory as the previous release left it."""
    v1 = SqliteDatabase(data / "audit.sqlite")
    assert migrate(v1, target=1) == 1
    old_audit = SqlAuditStore(v1, migrated=True)
    for e in events(4):
        old_audit.append(e)
    with closing(sqlite3.connect(data / "connections.sqlite")) as db:
        db.executescript(LEGACY_CONNECTIONS)
        db.execute(
            "INSERT INTO connections VALUES ('p', 'cloud', 'acct-9', 'created', ?, 'a b', '2026-01-01')",
            (Rot13Sealer().seal("account-cred"),),
        )
        db.execute(
            "INSERT INTO oauth_pending VALUES ('st', 'p', 'db', ?, 'http://cb', '2026-01-01')",
            (Rot13Sealer().seal("verifier"),),
        )
        db.execute(
            "INSERT INTO terms_acceptances VALUES ('p', 'cloud', 'v1', '2026-01-01T00:00:00+00:00', 'ap')"
        )
        db.commit()
    with closing(sqlite3.connect(data / "identity-replay.sqlite")) as db:
        db.execute(LEGACY_REPLAY)
        db.execute("INSERT INTO jti VALUES ('iss', 'j-retired', ?, 'retired', NULL)", (EXP,))
        db.commit()
    with closing(sqlite3.connect(data / "webhooks.sqlite")) as db:
        db.executescript(LEGACY_WEBHOOKS)
        db.execute("INSERT INTO events VALUES ('evt_1', 'setup_intent.succeeded', 'handled', 1)")
        db.execute("INSERT INTO ready VALUES ('cus_1', 'seti_1', 'evt_1', 1)")
        db.commit()


def test_a_new_sqlite_store_imports_the_previous_releases_files(tmp_path: Path) -> None:
    legacy_data_dir(tmp_path)
    store = open_store(tmp_path / "quartermaster.sqlite", sealer=Rot13Sealer())
    assert store.db.run_sync(schema_version) == LATEST

    async def read() -> None:
        conn = await store.connections.get_connection(principal_id="p", provider="cloud")
        assert conn is not None and conn.credential.reveal() == "account-cred" and conn.scopes == ["a", "b"]
        pending = await store.oauth.get_oauth_pending("st")
        assert pending is not None and pending.verifier.reveal() == "verifier"
        assert await store.terms.accepted_terms(principal_id="p", provider="cloud", terms_version="v1")
        assert await store.replay.is_retired("iss", "j-retired")
        assert await store.webhooks.seen("evt_1") and await store.webhooks.fired("cus_1", "seti_1")

    asyncio.run(read())
    report = store.audit.verify()
    assert report.ok and report.records == 4
    # the chain continues from the imported head
    assert store.audit.append(AuditEvent(event_id="new-1", time=datetime.now(UTC), action="charge.made"))
    assert store.audit.verify().records == 5
    # importing happens once: reopening does not duplicate or fail
    assert open_store(tmp_path / "quartermaster.sqlite").audit.verify().records == 5


def test_the_previous_audit_file_is_upgraded_in_place(tmp_path: Path) -> None:
    v1 = SqliteDatabase(tmp_path / "audit.sqlite")
    migrate(v1, target=1)
    for e in events(3):
        SqlAuditStore(v1, migrated=True).append(e)
    assert v1.run_sync(schema_version) == 1
    store = open_store(tmp_path / "audit.sqlite")
    assert store.db.run_sync(schema_version) == LATEST
    assert store.audit.verify().records == 3
    asyncio.run(store.freezes.freeze_agent(principal_id="p", agent="a"))


def test_a_postgres_audit_database_of_the_previous_release_is_upgraded(postgres_db: str) -> None:
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        # what `PostgresAuditStore` of the previous release created (migration 1 is that DDL, verbatim)
        for statement in AUDIT_V1_POSTGRES:
            conn.execute(statement)
    # rows written by the previous release's code path (the v1 schema, no qm_schema table yet)
    db = PostgresDatabase(postgres_db)
    assert db.run_sync(schema_version) == 1
    previous = SqlAuditStore(db, migrated=True)
    for e in events(3):
        previous.append(e)
    db.close()
    store = open_store(postgres_db)
    assert store.db.run_sync(schema_version) == LATEST
    report = store.audit.verify()
    assert report.ok and report.records == 3
    # the append-only triggers of version 1 were (re)created
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        try:
            conn.execute("DELETE FROM audit_records")
            raise AssertionError("delete was allowed")
        except psycopg.errors.RaiseException:
            pass
    store.close()


def test_replicas_starting_together_migrate_once(postgres_db: str) -> None:
    async def start() -> list[int]:
        opened = await asyncio.gather(*(asyncio.to_thread(open_store, postgres_db) for _ in range(4)))
        versions = [s.db.run_sync(schema_version) for s in opened]
        for s in opened:
            s.close()
        return versions

    assert asyncio.run(start()) == [LATEST] * 4


#: the API's page-session file of the previous release (verbatim schema)
LEGACY_PAGES = """
CREATE TABLE IF NOT EXISTS approval_links_used (link_hash TEXT PRIMARY KEY, used_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS page_sessions (
  sid_hash TEXT PRIMARY KEY, principal_id TEXT NOT NULL, email TEXT NOT NULL, approval_id TEXT,
  sealed_link TEXT, expires_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS page_decisions (
  approval_id TEXT PRIMARY KEY, sid_hash TEXT NOT NULL, decided_at REAL NOT NULL);
"""


def test_a_version_2_store_gains_page_sessions_and_keeps_its_rows(tmp_path: Path) -> None:
    """Version 2 -> 3: the rows of version 2 stay; the API's old `pages.sqlite` is imported, so a
    link used before the upgrade stays used (it must never open a second session)."""
    path = tmp_path / "quartermaster.sqlite"
    v2 = SqliteDatabase(path)
    assert migrate(v2, target=2) == 2
    asyncio.run(SqlFreezes(v2).freeze_agent(principal_id="p", agent="planner"))
    with closing(sqlite3.connect(tmp_path / "pages.sqlite")) as db:
        db.executescript(LEGACY_PAGES)
        db.execute("INSERT INTO approval_links_used VALUES ('used-link', 1.5)")
        db.execute(
            "INSERT INTO page_sessions VALUES ('sid-h', 'p', 'a@x', NULL, NULL, ?, 0)",
            (datetime.now(UTC).timestamp() + 600.25,),
        )
        db.commit()
    store = open_store(path)
    assert store.db.run_sync(schema_version) == LATEST

    async def read() -> None:
        assert await store.freezes.agent_freeze(principal_id="p", agent="planner") is not None
        assert await store.pages.link_used("used-link")
        session = await store.pages.get_session("sid-h")
        assert session is not None and session.email == "a@x"
        assert not await store.pages.open_link_session(
            link_hash="used-link", sid_hash="new", principal_id="p", email="a@x",
            approval_id="x", sealed_link="t", expires_at=datetime.now(UTC),
        )  # fmt: skip

    asyncio.run(read())


def test_a_version_2_postgres_store_is_upgraded(postgres_db: str) -> None:
    db = PostgresDatabase(postgres_db)
    assert migrate(db, target=2) == 2
    asyncio.run(SqlFreezes(db).freeze_agent(principal_id="p", agent="planner"))
    db.close()
    store = open_store(postgres_db)
    assert store.db.run_sync(schema_version) == LATEST

    async def read() -> None:
        assert await store.freezes.agent_freeze(principal_id="p", agent="planner") is not None
        assert await store.keys.published_keys() is None
        assert not await store.pages.link_used("any")

    asyncio.run(read())
    store.close()
