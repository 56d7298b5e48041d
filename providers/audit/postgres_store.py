"""`PostgresAuditStore`: the same hash-chained, append-only store on PostgreSQL, for deployments whose
workers run on several machines. Select it with `QM_AUDIT_DB=postgresql://...`.

Appends from any number of processes are serialised by a transaction-scoped advisory lock taken before
the chain head is read, so the chain never forks. The JSON is kept as TEXT (not jsonb, which would
reorder keys) because the hash covers its exact bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg

from models.audit import AuditEvent
from providers.audit.store import (
    GENESIS_HASH,
    INDEX_COLUMNS,
    AuditFilters,
    ChainRow,
    StoredAuditRecord,
    VerifyReport,
    canonical_json,
    chain_hash,
    index_columns,
    parse_event,
    time_ms,
    verify_rows,
)

#: advisory lock key: "qmaudit" as an integer; one chain per database
_LOCK_KEY = 0x716D6175646974
_PAGE = 500
_COLUMNS = ", ".join(INDEX_COLUMNS)
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_records (
        seq          BIGINT PRIMARY KEY,
        event_id     TEXT   NOT NULL UNIQUE,
        time_ms      BIGINT NOT NULL,
        action       TEXT   NOT NULL,
        principal_id TEXT,
        provider     TEXT,
        request_id   TEXT,
        resource_id  TEXT,
        workflow_id  TEXT,
        event_json   TEXT   NOT NULL,
        prev_hash    TEXT   NOT NULL,
        hash         TEXT   NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit_records (time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_principal ON audit_records (principal_id, time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_provider ON audit_records (provider, time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_request ON audit_records (request_id)",
    "CREATE INDEX IF NOT EXISTS audit_by_resource ON audit_records (resource_id)",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  BIGINT  NOT NULL,
        hash TEXT    NOT NULL)""",
    """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'audit records are append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER audit_records_append_only BEFORE UPDATE OR DELETE ON audit_records
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()""",
    """CREATE OR REPLACE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()""",
)


class PostgresAuditStore:
    """Audit store in a PostgreSQL database given by a libpq DSN. Thread-safe (one connection, locked)."""

    def __init__(self, dsn: str, *, connect_timeout_s: int = 10) -> None:
        self._lock = threading.Lock()
        # the DSN may hold a password: never let it reach an exception message
        try:
            # autocommit: every unit of work below is an explicit `transaction()` block
            self._conn = psycopg.connect(dsn, connect_timeout=connect_timeout_s, autocommit=True)
        except psycopg.OperationalError as exc:
            raise ConnectionError("cannot connect to the PostgreSQL audit store") from exc
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            for statement in _SCHEMA:
                self._conn.execute(statement)

    def append(self, event: AuditEvent) -> bool:
        """Append `event`; False when its event_id is already stored (a retry)."""
        event_json = canonical_json(event)
        columns = index_columns(parse_event(event_json, 0))
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            if self._conn.execute(
                "SELECT 1 FROM audit_records WHERE event_id = %s", (event.event_id,)
            ).fetchone():
                return False
            head = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            if head is None:
                head = self._conn.execute(
                    "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1"
                ).fetchone()
            prev_seq, prev_hash = (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)
            digest, seq = chain_hash(prev_hash, event_json), prev_seq + 1
            placeholders = ", ".join(["%s"] * (len(columns) + 4))
            self._conn.execute(
                f"INSERT INTO audit_records (seq, {_COLUMNS}, event_json, prev_hash, hash) "  # noqa: S608
                f"VALUES ({placeholders})",
                (seq, *columns.values(), event_json, prev_hash, digest),
            )
            self._conn.execute(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (seq, digest),
            )
        return True

    def query(self, filters: AuditFilters | None = None) -> list[StoredAuditRecord]:
        """Records matching `filters` in chain order."""
        f = filters or AuditFilters()
        where, params = _where(f)
        sql = "SELECT seq, event_json, prev_hash, hash FROM audit_records"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock, self._conn.transaction():
            rows = self._conn.execute(sql + " ORDER BY seq", params).fetchall()
        out: list[StoredAuditRecord] = []
        for seq, event_json, prev_hash, digest in rows:
            event = parse_event(event_json, seq)
            if f.matches(event):
                out.append(StoredAuditRecord(seq=seq, event=event, prev_hash=prev_hash, hash=digest))
                if f.limit is not None and len(out) >= f.limit:
                    break
        return out

    def iter_all(self) -> Iterator[StoredAuditRecord]:
        """Every record in seq order, read in pages."""
        for row in self._raw_rows():
            yield StoredAuditRecord(
                seq=row.seq,
                event=parse_event(row.event_json, row.seq),
                prev_hash=row.prev_hash,
                hash=row.hash,
            )

    def verify(self) -> VerifyReport:
        """Check the whole chain; see `providers.audit.store.verify_rows`."""
        with self._lock, self._conn.transaction():
            head = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return verify_rows(self._raw_rows(), (int(head[0]), str(head[1])) if head else None)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _raw_rows(self) -> Iterator[ChainRow]:
        after = -(2**62)  # a forged row with seq <= 0 must still be seen
        while True:
            with self._lock, self._conn.transaction():
                rows = self._conn.execute(
                    f"SELECT seq, event_json, prev_hash, hash, {_COLUMNS} FROM audit_records "  # noqa: S608
                    "WHERE seq > %s ORDER BY seq LIMIT %s",
                    (after, _PAGE),
                ).fetchall()
            for r in rows:
                yield ChainRow(
                    seq=int(r[0]),
                    event_json=r[1],
                    prev_hash=r[2],
                    hash=r[3],
                    columns=dict(zip(INDEX_COLUMNS, r[4:], strict=True)),
                )
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]


def _where(f: AuditFilters) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column in ("principal_id", "provider", "request_id", "resource_id", "workflow_id", "action"):
        value = getattr(f, column)
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if f.agent is not None:
        where.append("(event_json::jsonb -> 'agent_chain') ? %s")
        params.append(f.agent)
    if f.session_id is not None:
        where.append("(event_json::jsonb -> 'session_ids') ? %s")
        params.append(f.session_id)
    if f.since is not None:
        where.append("time_ms >= %s")
        params.append(time_ms(f.since))
    if f.until is not None:
        where.append("time_ms <= %s")
        params.append(time_ms(f.until))
    return where, params
