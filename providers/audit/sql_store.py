"""`SqlAuditStore`: the hash-chained, append-only audit trail in the store's database (SQLite or
PostgreSQL, `providers.store.database`). Its tables are schema version 1 of the store.

Appends from any number of processes are serialised before the chain head is read (SQLite: the
`BEGIN IMMEDIATE` write lock; PostgreSQL: a transaction-scoped advisory lock), so the chain never
forks. The JSON is kept as TEXT (not jsonb, which would reorder keys) because the hash covers its
exact bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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
from providers.store.database import Database, PostgresDatabase, SqliteDatabase, Tx
from providers.store.migrations import migrate

#: advisory lock key: "qmaudit" as an integer; one chain per database
_LOCK_KEY = 0x716D6175646974
_PAGE = 500
_COLUMNS = ", ".join(INDEX_COLUMNS)


class SqlAuditStore:
    """`AuditStore` over a `Database` (synchronous: `qm audit` and the audit activity's thread)."""

    def __init__(self, db: Database, *, migrated: bool = False) -> None:
        self.db = db
        if not migrated:
            migrate(db)

    def append(self, event: AuditEvent) -> bool:
        """Append `event`; False when its event_id is already stored (a retry)."""
        return self.append_many([event])[0]

    def append_many(self, events: Sequence[AuditEvent]) -> list[bool]:
        """Append `events` in order in one transaction (one lock, one commit): for each, False when its
        event_id is already stored. All or nothing, so a retried batch writes exactly what is missing."""
        prepared = []
        for event in events:
            event_json = canonical_json(event)
            prepared.append((event.event_id, event_json, index_columns(parse_event(event_json, 0))))

        def work(tx: Tx) -> list[bool]:
            if tx.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_LOCK_KEY,))
            # the head pointer, not the last row: after a truncated tail new records keep the gap visible
            head = tx.execute("SELECT seq, hash FROM audit_head WHERE id = 1") or tx.execute(
                "SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1"
            )
            seq, digest = (int(head[0][0]), str(head[0][1])) if head else (0, GENESIS_HASH)
            written: list[bool] = []
            insert = f"INSERT INTO audit_records (seq, {_COLUMNS}, event_json, prev_hash, hash) VALUES "  # noqa: S608
            for event_id, event_json, columns in prepared:
                if tx.execute("SELECT 1 FROM audit_records WHERE event_id = ?", (event_id,)):
                    written.append(False)
                    continue
                prev_hash, digest, seq = digest, chain_hash(digest, event_json), seq + 1
                marks = ", ".join("?" * (len(columns) + 4))
                tx.execute(f"{insert}({marks})", (seq, *columns.values(), event_json, prev_hash, digest))
                written.append(True)
            if any(written):
                tx.execute(
                    "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
                    (seq, digest),
                )
            return written

        if not prepared:
            return []
        return self.db.run_sync(work, write=True)

    def query(self, filters: AuditFilters | None = None) -> list[StoredAuditRecord]:
        """Records matching `filters` in chain order (indexed pre-selection, exact check on the event)."""
        f = filters or AuditFilters()
        where, params = _where(f, self.db.dialect)
        sql = "SELECT seq, event_json, prev_hash, hash FROM audit_records"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.db.run_sync(lambda tx: tx.execute(sql + " ORDER BY seq", params))
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
        head = self.db.run_sync(lambda tx: tx.execute("SELECT seq, hash FROM audit_head WHERE id = 1"))
        return verify_rows(self._raw_rows(), (int(head[0][0]), str(head[0][1])) if head else None)

    def close(self) -> None:
        self.db.close()

    def _raw_rows(self) -> Iterator[ChainRow]:
        after = -(2**62)  # a row forged with seq <= 0 must still be seen by verify
        sql = (
            f"SELECT seq, event_json, prev_hash, hash, {_COLUMNS} FROM audit_records "  # noqa: S608
            "WHERE seq > ? ORDER BY seq LIMIT ?"
        )
        while True:
            params = (after, _PAGE)

            def page(tx: Tx, params: tuple[int, int] = params) -> list[tuple[Any, ...]]:
                return tx.execute(sql, params)

            rows = self.db.run_sync(page)
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


class SqliteAuditStore(SqlAuditStore):
    """The audit trail in a SQLite store file (default `<data dir>/quartermaster.sqlite`)."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        super().__init__(SqliteDatabase(path, busy_timeout_s=busy_timeout_s))


class PostgresAuditStore(SqlAuditStore):
    """The audit trail in a PostgreSQL store given by a libpq DSN."""

    def __init__(self, dsn: str) -> None:
        super().__init__(PostgresDatabase(dsn, max_size=2))


def _where(f: AuditFilters, dialect: str) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column in ("principal_id", "provider", "request_id", "resource_id", "workflow_id", "action"):
        value = getattr(f, column)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    for wanted, key in ((f.agent, "agent_chain"), (f.session_id, "session_ids")):
        if wanted is None:
            continue
        if dialect == "postgresql":
            # jsonb_exists: the `?` operator would collide with the placeholder
            where.append(f"jsonb_exists(event_json::jsonb -> '{key}', ?)")
        else:
            where.append(f"EXISTS (SELECT 1 FROM json_each(event_json, '$.{key}') WHERE value = ?)")  # noqa: S608
        params.append(wanted)
    if f.since is not None:
        where.append("time_ms >= ?")
        params.append(time_ms(f.since))
    if f.until is not None:
        where.append("time_ms <= ?")
        params.append(time_ms(f.until))
    return where, params
