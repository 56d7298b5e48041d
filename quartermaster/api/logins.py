"""Human logins: one-time login codes sent to the human's channel, and the login tokens they buy.

Server side. Only hashes are stored: a login code as HMAC(authority key, login id + code), a token as
sha256 (tokens are 256-bit random, so an unkeyed hash cannot be reversed). The table also remembers
each principal's email (the API needs it to act for an agent of that principal) and the agents a human
froze, so a reset of a workflow cannot undo a freeze (the API checks this list on every agent call).

The SQLite file lives in the data directory (0600); replicas on other hosts share one store
(`QM_DATABASE_URL`, see docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

TOKEN_PREFIX = "qmh_"  # noqa: S105 - a prefix, not a secret
LOGIN_CODE_TRIES = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS login_codes (
  login_id TEXT PRIMARY KEY, principal_id TEXT NOT NULL, email TEXT NOT NULL, code_hash TEXT NOT NULL,
  expires_at REAL NOT NULL, tries INTEGER NOT NULL DEFAULT 0, used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS login_tokens (
  token_hash TEXT PRIMARY KEY, principal_id TEXT NOT NULL, email TEXT NOT NULL,
  expires_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS principals (principal_id TEXT PRIMARY KEY, email TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS frozen_agents (
  principal_id TEXT NOT NULL, agent TEXT NOT NULL, frozen INTEGER NOT NULL, changed_at REAL NOT NULL,
  PRIMARY KEY (principal_id, agent));
CREATE TABLE IF NOT EXISTS revoked_sessions (session_id TEXT PRIMARY KEY, revoked_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class HumanLogin:
    principal_id: str
    email: str
    expires_at: datetime


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LoginStore:
    """Logins, tokens, principals' emails and the API's own freeze/revocation list."""

    def __init__(self, path: Path, *, code_key: bytes) -> None:
        self._path = path
        self._key = code_key
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._connect() as db:
            db.executescript(_SCHEMA)
        for suffix in ("", "-wal", "-shm"):
            if (p := Path(f"{path}{suffix}")).exists():
                os.chmod(p, 0o600)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    async def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        def run() -> list[tuple[object, ...]]:
            with self._connect() as db:
                return list(db.execute(sql, args).fetchall())

        return await asyncio.to_thread(run)

    def _code_hash(self, login_id: str, code: str) -> str:
        return hmac.new(self._key, f"login:{login_id}:{code}".encode(), hashlib.sha256).hexdigest()

    # ---- login codes ----------------------------------------------------------------------------
    async def start(self, *, principal_id: str, email: str, ttl: timedelta) -> tuple[str, str, datetime]:
        """A new login: (login id, code for the human's channel only, expiry)."""
        login_id = "login_" + secrets.token_hex(12)
        code = f"{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**4):04d}-{secrets.randbelow(10**4):04d}"
        expires = datetime.now(UTC) + ttl
        await self._run(
            "INSERT INTO login_codes (login_id, principal_id, email, code_hash, expires_at)"
            " VALUES (?,?,?,?,?)",
            (login_id, principal_id, email, self._code_hash(login_id, code), expires.timestamp()),
        )
        await self._run("INSERT OR REPLACE INTO principals VALUES (?, ?)", (principal_id, email))
        return login_id, code, expires

    async def redeem(self, login_id: str, code: str, *, token_ttl: timedelta) -> tuple[str, HumanLogin]:
        """Trade a login code for a token. Raises LookupError(reason) when refused; a wrong code
        counts one of LOGIN_CODE_TRIES, an empty one never does."""
        rows = await self._run(
            "SELECT principal_id, email, code_hash, expires_at, tries, used FROM login_codes"
            " WHERE login_id=?",
            (login_id,),
        )
        if not rows:
            raise LookupError("unknown login")
        principal_id, email, stored, expires_at, tries, used = rows[0]
        if used:
            raise LookupError("this login code was already used")
        if float(str(expires_at)) < datetime.now(UTC).timestamp():
            raise LookupError("this login code has expired")
        if int(str(tries)) >= LOGIN_CODE_TRIES:
            raise LookupError("too many wrong codes: start a new login")
        if not code.strip():
            raise LookupError("give the code you received")
        if not hmac.compare_digest(str(stored), self._code_hash(login_id, code.strip())):
            await self._run("UPDATE login_codes SET tries = tries + 1 WHERE login_id=?", (login_id,))
            left = LOGIN_CODE_TRIES - int(str(tries)) - 1
            raise LookupError(f"wrong code ({left} tries left)")
        # single use: only the first redeemer flips `used`
        changed = await self._run(
            "UPDATE login_codes SET used = 1 WHERE login_id=? AND used = 0 RETURNING login_id", (login_id,)
        )
        if not changed:
            raise LookupError("this login code was already used")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        exp = datetime.now(UTC) + token_ttl
        await self._run(
            "INSERT INTO login_tokens (token_hash, principal_id, email, expires_at) VALUES (?,?,?,?)",
            (token_hash(token), str(principal_id), str(email), exp.timestamp()),
        )
        return token, HumanLogin(principal_id=str(principal_id), email=str(email), expires_at=exp)

    async def human(self, token: str) -> HumanLogin | None:
        """The login a token stands for, while it is valid."""
        rows = await self._run(
            "SELECT principal_id, email, expires_at, revoked FROM login_tokens WHERE token_hash=?",
            (token_hash(token),),
        )
        if not rows:
            return None
        principal_id, email, expires_at, revoked = rows[0]
        exp = datetime.fromtimestamp(float(str(expires_at)), UTC)
        if revoked or exp <= datetime.now(UTC):
            return None
        return HumanLogin(principal_id=str(principal_id), email=str(email), expires_at=exp)

    async def logout(self, token: str) -> None:
        await self._run("UPDATE login_tokens SET revoked = 1 WHERE token_hash=?", (token_hash(token),))

    # ---- principals, freezes, revocations --------------------------------------------------------
    async def email_of(self, principal_id: str) -> str | None:
        rows = await self._run("SELECT email FROM principals WHERE principal_id=?", (principal_id,))
        return str(rows[0][0]) if rows else None

    async def set_frozen(self, principal_id: str, agent: str, frozen: bool) -> None:
        await self._run(
            "INSERT OR REPLACE INTO frozen_agents VALUES (?, ?, ?, ?)",
            (principal_id, agent, int(frozen), datetime.now(UTC).timestamp()),
        )

    async def frozen(self, principal_id: str, agents: list[str]) -> list[str]:
        if not agents:
            return []
        marks = ",".join("?" * len(agents))
        rows = await self._run(
            f"SELECT agent FROM frozen_agents WHERE principal_id=? AND frozen=1 AND agent IN ({marks})",  # noqa: S608 - placeholders only
            (principal_id, *agents),
        )
        return [str(r[0]) for r in rows]

    async def revoke_sessions(self, session_ids: list[str]) -> None:
        for sid in session_ids:
            await self._run(
                "INSERT OR IGNORE INTO revoked_sessions VALUES (?, ?)", (sid, datetime.now(UTC).timestamp())
            )

    async def any_revoked(self, session_ids: list[str]) -> bool:
        if not session_ids:
            return False
        marks = ",".join("?" * len(session_ids))
        rows = await self._run(
            f"SELECT 1 FROM revoked_sessions WHERE session_id IN ({marks}) LIMIT 1",  # noqa: S608 - placeholders only
            tuple(session_ids),
        )
        return bool(rows)
