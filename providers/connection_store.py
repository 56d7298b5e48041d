"""Quartermaster's own store of linked accounts, pending OAuth (PKCE) state and terms acceptances.

SQLite under the data directory. Account credentials and PKCE verifiers are sealed before they are
written (the caller passes `seal`/`unseal`, the worker's AES-GCM seal key), so the file alone reveals
nothing, and they never enter Temporal history: workflows only see `ConnectionRef`s.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from models.secret import Secret

_SCHEMA = """
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


class StoredConnection:
    def __init__(self, account_id: str, link_action: str, credential: Secret, scopes: list[str]) -> None:
        self.account_id = account_id
        self.link_action = link_action
        self.credential = credential
        self.scopes = scopes


class ConnectionStore:
    def __init__(self, path: Path, *, seal: Callable[[str], str], unseal: Callable[[str], str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._seal = seal
        self._unseal = unseal

    def put_connection(
        self,
        *,
        principal_id: str,
        provider: str,
        account_id: str,
        link_action: str,
        credential: Secret,
        scopes: list[str],
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO connections VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT(principal_id, provider) DO UPDATE SET "
                "account_id=excluded.account_id, link_action=excluded.link_action, "
                "credential=excluded.credential, scopes=excluded.scopes, updated_at=excluded.updated_at",
                (
                    principal_id,
                    provider,
                    account_id,
                    link_action,
                    self._seal(credential.reveal()),
                    " ".join(scopes),
                    datetime.now(UTC).isoformat(),
                ),
            )

    def get_connection(self, *, principal_id: str, provider: str) -> StoredConnection | None:
        with self._lock:
            row = self._db.execute(
                "SELECT account_id, link_action, credential, scopes FROM connections "
                "WHERE principal_id=? AND provider=?",
                (principal_id, provider),
            ).fetchone()
        if row is None:
            return None
        return StoredConnection(row[0], row[1], Secret(self._unseal(row[2])), row[3].split())

    def put_oauth_pending(
        self, *, state: str, principal_id: str, provider: str, verifier: Secret, redirect_uri: str
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO oauth_pending VALUES (?,?,?,?,?,?)",
                (
                    state,
                    principal_id,
                    provider,
                    self._seal(verifier.reveal()),
                    redirect_uri,
                    datetime.now(UTC).isoformat(),
                ),
            )

    def get_oauth_pending(self, state: str) -> tuple[str, str, Secret, str] | None:
        """(principal_id, provider, verifier, redirect_uri) for a state, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT principal_id, provider, verifier, redirect_uri FROM oauth_pending WHERE state=?",
                (state,),
            ).fetchone()
        if row is None:
            return None
        return row[0], row[1], Secret(self._unseal(row[2])), row[3]

    def record_terms(
        self, *, principal_id: str, provider: str, terms_version: str, accepted_at: datetime, approval_id: str
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO terms_acceptances VALUES (?,?,?,?,?)",
                (principal_id, provider, terms_version, accepted_at.isoformat(), approval_id),
            )

    def accepted_terms(
        self, *, principal_id: str, provider: str, terms_version: str
    ) -> tuple[str, str] | None:
        """(accepted_at ISO, approval_id) if this principal accepted this version, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT accepted_at, approval_id FROM terms_acceptances "
                "WHERE principal_id=? AND provider=? AND terms_version=?",
                (principal_id, provider, terms_version),
            ).fetchone()
        return (row[0], row[1]) if row else None
