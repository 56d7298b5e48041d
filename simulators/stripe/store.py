"""The local Stripe's state in one SQLite file: objects as JSON, idempotency records, SPT captures,
and the webhook event log. One connection, used only from the server's event loop thread."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from providers.private_files import connect_private_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, customer TEXT, created INTEGER NOT NULL,
    seq INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_kind_customer ON objects (kind, customer);
CREATE TABLE IF NOT EXISTS idempotency (
    api_key TEXT NOT NULL, key TEXT NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
    params TEXT NOT NULL, status INTEGER NOT NULL, body TEXT NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (api_key, key)
);
CREATE TABLE IF NOT EXISTS captures (
    token TEXT NOT NULL, payment_intent TEXT NOT NULL, amount INTEGER NOT NULL, created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_token ON captures (token);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, created INTEGER NOT NULL, body TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, last_status INTEGER
);
"""


class IdempotencyRecord:
    def __init__(self, method: str, path: str, params: str, status: int, body: str) -> None:
        self.method, self.path, self.params, self.status, self.body = method, path, params, status, body


class SimStore:
    """SQLite-backed state. `clock_offset` shifts the simulated "now" (a test clock) without
    touching real time, which webhook signatures keep using."""

    def __init__(self, path: Path) -> None:
        self._db = connect_private_sqlite(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._seq = int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM objects").fetchone()[0])
        self.clock_offset = 0

    def now(self) -> int:
        return int(time.time()) + self.clock_offset

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything a request changes commits together with its idempotency record."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # objects
    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        customer = obj.get("customer") if isinstance(obj.get("customer"), str) else None
        self._db.execute(
            "INSERT INTO objects (id, kind, customer, created, seq, body) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET customer=excluded.customer, body=excluded.body",
            (obj["id"], obj["object"], customer, obj.get("created", self.now()), self._seq, json.dumps(obj)),
        )
        return obj

    def get(self, kind: str, ident: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT body FROM objects WHERE id = ? AND kind = ?", (ident, kind)).fetchone()
        return json.loads(row[0]) if row else None

    def find(
        self, kind: str, *, customer: str | None = None, where: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind, newest first (Stripe's list order); `where` matches JSON paths exactly."""
        sql = "SELECT body FROM objects WHERE kind = ?"
        args: list[Any] = [kind]
        if customer is not None:
            sql += " AND customer = ?"
            args.append(customer)
        for json_path, value in (where or {}).items():
            sql += " AND json_extract(body, ?) = ?"
            args += [json_path, value]
        sql += " ORDER BY seq DESC"
        return [json.loads(r[0]) for r in self._db.execute(sql, args)]

    # idempotency
    def idempotency(self, api_key: str, key: str) -> IdempotencyRecord | None:
        row = self._db.execute(
            "SELECT method, path, params, status, body FROM idempotency WHERE api_key = ? AND key = ?",
            (api_key, key),
        ).fetchone()
        return IdempotencyRecord(*row) if row else None

    def save_idempotency(
        self, api_key: str, key: str, method: str, path: str, params: str, status: int, body: str
    ) -> None:
        self._db.execute(
            "INSERT INTO idempotency VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (api_key, key, method, path, params, status, body, self.now()),
        )

    # shared payment token usage
    def add_capture(self, token: str, payment_intent: str, amount: int, created: int) -> None:
        self._db.execute("INSERT INTO captures VALUES (?, ?, ?, ?)", (token, payment_intent, amount, created))

    def captured(self, token: str, since: int | None = None) -> int:
        sql = "SELECT COALESCE(SUM(amount), 0) FROM captures WHERE token = ?"
        args: list[Any] = [token]
        if since is not None:
            sql += " AND created >= ?"
            args.append(since)
        return int(self._db.execute(sql, args).fetchone()[0])

    # webhook events
    def add_event(self, event: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO events (id, type, created, body) VALUES (?, ?, ?, ?)",
            (event["id"], event["type"], event["created"], json.dumps(event)),
        )

    def event_body(self, ident: str) -> str | None:
        row = self._db.execute("SELECT body FROM events WHERE id = ?", (ident,)).fetchone()
        return str(row[0]) if row else None

    def record_delivery(self, ident: str, status: int | None, delivered: bool) -> None:
        self._db.execute(
            "UPDATE events SET attempts = attempts + 1, last_status = ?, delivered = MAX(delivered, ?) "
            "WHERE id = ?",
            (status, int(delivered), ident),
        )

    def events(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT id, type, created, delivered, attempts, last_status, body FROM events ORDER BY rowid"
        )
        return [
            {
                "id": r[0], "type": r[1], "created": r[2], "delivered": bool(r[3]), "attempts": r[4],
                "last_status": r[5], "payload": r[6],
            }
            for r in rows
        ]  # fmt: skip
