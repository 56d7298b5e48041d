"""Browser sessions for the approval pages (browsers cannot send the bearer header).

A page session is a random id in an HttpOnly, SameSite=Strict cookie; the API stores only its sha256.
It comes from one of two places:
- an **approval link** (from the notification): the session is scoped to that one approval and holds
  the sealed link (the code inside is what the API submits to the workflow). Each link opens one
  session only: its hash is recorded as used, so a replayed link is refused;
- the **login page** (e-mail, then the code from the channel): the session sees all of the human's
  pending approvals, and a decision needs the one-time code typed into the page.

Its own SQLite file (`<data dir>/pages.sqlite`, 0600) for now: short-lived rows only; replicas behind
one load balancer would move these tables into the one store (`QM_DATABASE_URL`).

A decision claims the approval in `page_decisions` first, so one approval is decided through the pages
at most once (the workflow refuses a second decision too). CSRF tokens are an HMAC of the session id
and the approval id under a key only the API holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from providers.private_files import private_sqlite_file
from quartermaster.identity.approval_links import derive_key, link_hash

COOKIE = "qm_page"
LINK_SESSION_TTL = timedelta(minutes=15)
LOGIN_SESSION_TTL = timedelta(hours=12)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approval_links_used (link_hash TEXT PRIMARY KEY, used_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS page_sessions (
  sid_hash TEXT PRIMARY KEY, principal_id TEXT NOT NULL, email TEXT NOT NULL, approval_id TEXT,
  sealed_link TEXT, expires_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS page_decisions (
  approval_id TEXT PRIMARY KEY, sid_hash TEXT NOT NULL, decided_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class PageSession:
    sid: str
    principal_id: str
    email: str
    #: None: a login session (every approval of the principal); else the one approval of its link
    approval_id: str | None
    #: the sealed approval link that opened it (link sessions only)
    sealed_link: str | None
    expires_at: datetime

    def may_open(self, approval_id: str) -> bool:
        return self.approval_id is None or self.approval_id == approval_id


def _sha(value: str) -> str:
    return hashlib.sha256(f"page-session:{value}".encode()).hexdigest()


class PageSessionStore:
    def __init__(self, path: Path, *, principal_key: bytes) -> None:
        self._path = path
        self._csrf_key = derive_key(principal_key, b"quartermaster page csrf v1")
        private_sqlite_file(path)  # 0600 before anything opens it (session and link hashes)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        return db

    async def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        def run() -> list[tuple[object, ...]]:
            with self._connect() as db:
                return list(db.execute(sql, args).fetchall())

        return await asyncio.to_thread(run)

    async def _create(
        self, principal_id: str, email: str, approval_id: str | None, sealed: str | None, ttl: timedelta
    ) -> PageSession:
        sid = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + ttl
        await self._run(
            "INSERT INTO page_sessions (sid_hash, principal_id, email, approval_id, sealed_link, expires_at)"
            " VALUES (?,?,?,?,?,?)",
            (_sha(sid), principal_id, email, approval_id, sealed, expires.timestamp()),
        )
        return PageSession(sid, principal_id, email, approval_id, sealed, expires)

    async def link_used(self, token: str) -> bool:
        rows = await self._run("SELECT 1 FROM approval_links_used WHERE link_hash=?", (link_hash(token),))
        return bool(rows)

    async def from_link(
        self, token: str, *, principal_id: str, email: str, approval_id: str, link_expires: datetime
    ) -> PageSession | None:
        """A session for one approval, or None when this link was already used."""
        used = await self._run(
            "INSERT OR IGNORE INTO approval_links_used VALUES (?, ?) RETURNING link_hash",
            (link_hash(token), datetime.now(UTC).timestamp()),
        )
        if not used:
            return None
        ttl = min(LINK_SESSION_TTL, link_expires - datetime.now(UTC) + timedelta(minutes=5))
        return await self._create(principal_id, email, approval_id, token, ttl)

    async def from_login(self, *, principal_id: str, email: str) -> PageSession:
        return await self._create(principal_id, email, None, None, LOGIN_SESSION_TTL)

    async def get(self, sid: str | None) -> PageSession | None:
        if not sid or len(sid) > 200:
            return None
        rows = await self._run(
            "SELECT principal_id, email, approval_id, sealed_link, expires_at, revoked FROM page_sessions"
            " WHERE sid_hash=?",
            (_sha(sid),),
        )
        if not rows:
            return None
        principal_id, email, approval_id, sealed, expires_at, revoked = rows[0]
        exp = datetime.fromtimestamp(float(str(expires_at)), UTC)
        if revoked or exp <= datetime.now(UTC):
            return None
        return PageSession(
            sid,
            str(principal_id),
            str(email),
            None if approval_id is None else str(approval_id),
            None if sealed is None else str(sealed),
            exp,
        )

    async def end(self, sid: str) -> None:
        await self._run("UPDATE page_sessions SET revoked = 1 WHERE sid_hash=?", (_sha(sid),))

    # ---- decisions ------------------------------------------------------------------------------
    async def claim_decision(self, session: PageSession, approval_id: str) -> bool:
        """True for the first decision of `approval_id` through the pages."""
        got = await self._run(
            "INSERT OR IGNORE INTO page_decisions VALUES (?, ?, ?) RETURNING approval_id",
            (approval_id, _sha(session.sid), datetime.now(UTC).timestamp()),
        )
        return bool(got)

    async def release_decision(self, approval_id: str) -> None:
        """Undo a claim the workflow did not accept (e.g. a mistyped code), so the human can retry."""
        await self._run("DELETE FROM page_decisions WHERE approval_id=?", (approval_id,))

    # ---- CSRF -----------------------------------------------------------------------------------
    def csrf_token(self, session: PageSession, form: str) -> str:
        return hmac.new(self._csrf_key, f"{session.sid}:{form}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: PageSession, form: str, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(session, form), token or "")
