"""A simulated provider's state in one SQLite file (`<data dir>/providers/<name>.sqlite`), so a restart
loses nothing. Tokens and codes are stored as SHA-256 hashes only."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from providers.private_files import connect_private_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, subject TEXT, display_name TEXT,
    created_at INTEGER NOT NULL, origin TEXT NOT NULL,
    terms_version TEXT, terms_accepted_at TEXT, terms_accepted_by TEXT, terms_approval_id TEXT);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY, token_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    account_id TEXT NOT NULL, client_id TEXT NOT NULL, scopes TEXT NOT NULL, resource_id TEXT,
    source TEXT, created_at INTEGER NOT NULL, expires_at INTEGER, revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS oauth_requests (
    request_id TEXT PRIMARY KEY, params TEXT NOT NULL, account_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, decided INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS oauth_codes (
    code_hash TEXT PRIMARY KEY, account_id TEXT NOT NULL, client_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL, code_challenge TEXT NOT NULL, scopes TEXT NOT NULL,
    expires_at INTEGER NOT NULL, used_at INTEGER);
CREATE TABLE IF NOT EXISTS resources (
    resource_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, service_id TEXT NOT NULL,
    name TEXT NOT NULL, status TEXT NOT NULL, configuration TEXT NOT NULL, charge TEXT,
    error_message TEXT, needs_information_schema TEXT, created_at INTEGER NOT NULL,
    ready_at REAL, polls INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS charges (
    charge_id TEXT PRIMARY KEY, resource_id TEXT NOT NULL, account_id TEXT NOT NULL,
    amount INTEGER NOT NULL, currency TEXT NOT NULL, payment_reference TEXT NOT NULL,
    idempotency_key TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, status INTEGER NOT NULL,
    body TEXT NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (scope, key));
CREATE TABLE IF NOT EXISTS used_jti (jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);
"""


def token_hash(token: str) -> str:
    """What the store keeps instead of a token or code."""
    return hashlib.sha256(token.encode()).hexdigest()


class SimulatorStore:
    """Synchronous access to the SQLite file; the app calls it from its single event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect_private_sqlite(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything in the block commits together or not at all."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        row = self._db.execute(sql, args).fetchone()
        return dict(row) if row is not None else None

    def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""
        return self._db.execute(sql, args).rowcount

    def all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute(sql, args).fetchall()]

    # accounts
    def account_by_email(self, email: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM accounts WHERE email = ?", email.strip().lower())

    def account(self, account_id: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM accounts WHERE account_id = ?", account_id)

    # tokens
    def active_token(self, token: str) -> dict[str, Any] | None:
        """The token's row if it exists, is not revoked and has not expired."""
        row = self.one("SELECT * FROM tokens WHERE token_hash = ?", token_hash(token))
        if row is None or row["revoked_at"] is not None:
            return None
        if row["expires_at"] is not None and row["expires_at"] <= int(time.time()):
            return None
        return row

    # resources
    def resource(self, resource_id: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM resources WHERE resource_id = ?", resource_id)

    # idempotency
    def idempotency_record(self, scope: str, key: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM idempotency WHERE scope = ? AND key = ?", scope, key)

    # replay protection
    def use_jti(self, jti: str, expires_at: int) -> bool:
        """Record a one-time assertion id; False when it was already used."""
        now = int(time.time())
        with self.transaction() as db:
            db.execute("DELETE FROM used_jti WHERE expires_at < ?", (now - 3600,))
            cur = db.execute(
                "INSERT OR IGNORE INTO used_jti (jti, expires_at) VALUES (?, ?)", (jti, expires_at)
            )
            return cur.rowcount == 1

    def state(self) -> dict[str, Any]:
        """Everything but secrets (token hashes, code hashes and payment tokens are never stored in
        the clear, and are left out here too)."""
        tokens = self.all(
            "SELECT token_id, kind, account_id, client_id, scopes, resource_id, created_at, expires_at, "
            "revoked_at FROM tokens ORDER BY created_at, token_id"
        )
        resources = self.all("SELECT * FROM resources ORDER BY created_at, resource_id")
        for r in resources:
            for field in ("configuration", "charge", "needs_information_schema"):
                r[field] = json.loads(r[field]) if r[field] else None
        return {
            "accounts": self.all("SELECT * FROM accounts ORDER BY created_at, account_id"),
            "resources": resources,
            "charges": self.all("SELECT * FROM charges ORDER BY created_at, charge_id"),
            "tokens": tokens,
        }
