"""`SqliteAuditStore`: the default audit store, one append-only SQLite file in the data directory.

Several worker processes may append at once: each append is one `BEGIN IMMEDIATE` transaction (the
write lock is taken before the chain head is read), so two writers can never chain from the same
record. WAL mode lets readers (`qm audit`) run while workers write.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

SCHEMA_VERSION = 1
_PAGE = 500
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit_records (
        seq          INTEGER PRIMARY KEY,
        event_id     TEXT    NOT NULL UNIQUE,
        time_ms      INTEGER NOT NULL,
        action       TEXT    NOT NULL,
        principal_id TEXT,
        provider     TEXT,
        request_id   TEXT,
        resource_id  TEXT,
        workflow_id  TEXT,
        event_json   TEXT    NOT NULL,
        prev_hash    TEXT    NOT NULL,
        hash         TEXT    NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit_records (time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_principal ON audit_records (principal_id, time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_provider ON audit_records (provider, time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_by_request ON audit_records (request_id)",
    "CREATE INDEX IF NOT EXISTS audit_by_resource ON audit_records (resource_id)",
    """CREATE TABLE IF NOT EXISTS audit_head (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        seq  INTEGER NOT NULL,
        hash TEXT    NOT NULL)""",
    # append-only by construction; the hash chain still catches anyone who drops these triggers
    """CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
        BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END""",
)
_COLUMNS = ", ".join(INDEX_COLUMNS)


class SqliteAuditStore:
    """Audit store in one SQLite file (default `<data dir>/audit.sqlite`). Thread-safe."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves
        self._conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        with self._lock, self._write():
            if self._conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                # one statement at a time: executescript() would COMMIT our IMMEDIATE transaction
                for statement in _SCHEMA:
                    self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- transactions ----------------------------------------------------------------------------
    def _write(self) -> _Immediate:
        return _Immediate(self._conn)

    # -- AuditStore ------------------------------------------------------------------------------
    def append(self, event: AuditEvent) -> bool:
        """Append `event` to the chain; False when its event_id is already stored (a retry)."""
        event_json = canonical_json(event)
        columns = index_columns(parse_event(event_json, 0))
        with self._lock, self._write():
            if self._conn.execute(
                "SELECT 1 FROM audit_records WHERE event_id = ?", (event.event_id,)
            ).fetchone():
                return False
            prev_seq, prev_hash = self._chain_tip()
            digest = chain_hash(prev_hash, event_json)
            seq = prev_seq + 1
            self._conn.execute(
                f"INSERT INTO audit_records (seq, {_COLUMNS}, event_json, prev_hash, hash) "  # noqa: S608
                f"VALUES (?, {', '.join('?' * len(columns))}, ?, ?, ?)",
                (seq, *columns.values(), event_json, prev_hash, digest),
            )
            self._conn.execute(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                (seq, digest),
            )
            return True

    def _chain_tip(self) -> tuple[int, str]:
        # the head pointer, not the last row: after a truncated tail new records keep the gap visible
        head = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        if head is None:
            head = self._conn.execute(
                "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        return (int(head[0]), str(head[1])) if head else (0, GENESIS_HASH)

    def query(self, filters: AuditFilters | None = None) -> list[StoredAuditRecord]:
        """Records matching `filters` in chain order (indexed pre-selection, exact check on the event)."""
        f = filters or AuditFilters()
        where, params = _where(f)
        sql = "SELECT seq, event_json, prev_hash, hash FROM audit_records"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        sql += " ORDER BY seq"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        out: list[StoredAuditRecord] = []
        for seq, event_json, prev_hash, digest in rows:
            event = parse_event(event_json, seq)
            if f.matches(event):
                out.append(StoredAuditRecord(seq=seq, event=event, prev_hash=prev_hash, hash=digest))
                if f.limit is not None and len(out) >= f.limit:
                    break
        return out

    def iter_all(self) -> Iterator[StoredAuditRecord]:
        """Every record in seq order, read in pages so memory stays flat."""
        for row in self._raw_rows():
            yield StoredAuditRecord(
                seq=row.seq,
                event=parse_event(row.event_json, row.seq),
                prev_hash=row.prev_hash,
                hash=row.hash,
            )

    def verify(self) -> VerifyReport:
        """Check the whole chain; see `providers.audit.store.verify_rows`."""
        with self._lock:
            head = self._conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
        return verify_rows(self._raw_rows(), (int(head[0]), str(head[1])) if head else None)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _raw_rows(self) -> Iterator[ChainRow]:
        after = -(2**62)  # a row forged with seq <= 0 must still be seen by verify
        while True:
            with self._lock:
                rows = self._conn.execute(
                    f"SELECT seq, event_json, prev_hash, hash, {_COLUMNS} FROM audit_records "  # noqa: S608
                    "WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, _PAGE),
                ).fetchall()
            for r in rows:
                yield ChainRow(
                    seq=r[0],
                    event_json=r[1],
                    prev_hash=r[2],
                    hash=r[3],
                    columns=dict(zip(INDEX_COLUMNS, r[4:], strict=True)),
                )
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]


class _Immediate:
    """`BEGIN IMMEDIATE` ... `COMMIT`, or `ROLLBACK` on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self._conn.execute("ROLLBACK")
            return
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error:
            # never leave the connection inside a half-finished transaction
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise


def _where(f: AuditFilters) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column in ("principal_id", "provider", "request_id", "resource_id", "workflow_id", "action"):
        value = getattr(f, column)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if f.agent is not None:
        where.append("EXISTS (SELECT 1 FROM json_each(event_json, '$.agent_chain') WHERE value = ?)")
        params.append(f.agent)
    if f.session_id is not None:
        where.append("EXISTS (SELECT 1 FROM json_each(event_json, '$.session_ids') WHERE value = ?)")
        params.append(f.session_id)
    if f.since is not None:
        where.append("time_ms >= ?")
        params.append(time_ms(f.since))
    if f.until is not None:
        where.append("time_ms <= ?")
        params.append(time_ms(f.until))
    return where, params
