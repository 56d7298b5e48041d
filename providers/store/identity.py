"""Who may act: identity token replay guard, human logins, and agent freezes / session revocations.

Every read-modify-write runs in one write transaction (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: the
row is locked with `FOR UPDATE` or decided by a primary key), so replicas sharing the database agree.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from datetime import UTC, datetime

from providers.store.database import Database, Tx
from providers.store.interfaces import AgentFreeze, LoginCheck, LoginToken, SessionRevocation, Standing

#: replay records outlive their token's expiry by the verifier's clock skew
REPLAY_LEEWAY_SECONDS = 30


def _epoch(moment: datetime) -> int:
    if moment.utcoffset() is None:
        raise ValueError("times must be timezone-aware")
    return int(moment.timestamp())


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(int(seconds), UTC)


class SqlReplayGuard:
    """`ReplayStore`. The `*_now` methods are the same operations for synchronous callers
    (`qm run`'s launcher retires a token after its child exits)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def consume_now(self, issuer: str, jti: str, exp: int, use_id: str) -> bool:
        def work(tx: Tx) -> bool:
            tx.execute("DELETE FROM identity_jti WHERE exp < ?", (int(time.time()) - REPLAY_LEEWAY_SECONDS,))
            # the primary key decides between concurrent first uses; the loser reads the winner's row
            tx.execute(
                "INSERT INTO identity_jti VALUES (?, ?, ?, 'consumed', ?) ON CONFLICT DO NOTHING",
                (issuer, jti, exp, use_id),
            )
            row = tx.execute(
                "SELECT state, use_id FROM identity_jti WHERE issuer = ? AND jti = ?", (issuer, jti)
            )
            return bool(row and row[0][0] == "consumed" and row[0][1] == use_id)

        return self._db.run_sync(work, write=True)

    def retire_now(self, issuer: str, jti: str, exp: int) -> None:
        self._db.run_sync(
            lambda tx: tx.execute(
                "INSERT INTO identity_jti VALUES (?, ?, ?, 'retired', NULL) "
                "ON CONFLICT (issuer, jti) DO UPDATE SET state = 'retired'",
                (issuer, jti, exp),
            ),
            write=True,
        )

    def is_retired_now(self, issuer: str, jti: str) -> bool:
        row = self._db.run_sync(
            lambda tx: tx.execute(
                "SELECT state FROM identity_jti WHERE issuer = ? AND jti = ?", (issuer, jti)
            )
        )
        return bool(row and row[0][0] == "retired")

    async def consume(self, issuer: str, jti: str, exp: int, use_id: str) -> bool:
        return await asyncio.to_thread(self.consume_now, issuer, jti, exp, use_id)

    async def retire(self, issuer: str, jti: str, exp: int) -> None:
        await asyncio.to_thread(self.retire_now, issuer, jti, exp)

    async def is_retired(self, issuer: str, jti: str) -> bool:
        return await asyncio.to_thread(self.is_retired_now, issuer, jti)


class SqlLogins:
    """`LoginStore`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def email_of(self, principal_id: str) -> str | None:
        """The email a principal logged in with (the API acts for that principal's agents)."""

        def work(tx: Tx) -> str | None:
            rows = tx.execute(
                "SELECT email FROM login_tokens WHERE principal_id = ? LIMIT 1", (principal_id,)
            )
            return str(rows[0][0]) if rows else None

        return await self._db.run(work)

    async def start_login(
        self,
        *,
        login_id: str,
        principal_id: str,
        email: str,
        code_hash: str,
        expires_at: datetime,
        max_tries: int = 5,
    ) -> None:
        row = (login_id, principal_id, email, code_hash, _epoch(expires_at), 0, max_tries, 0)

        def work(tx: Tx) -> None:
            tx.execute("DELETE FROM login_codes WHERE expires_at < ?", (int(time.time()) - 86_400,))
            tx.execute("INSERT INTO login_codes VALUES (?,?,?,?,?,?,?,?)", row)

        await self._db.run(work, write=True)

    async def check_login_code(self, *, login_id: str, code_hash: str) -> LoginCheck:
        def work(tx: Tx) -> LoginCheck:
            rows = tx.execute(
                "SELECT principal_id, email, code_hash, expires_at, tries, max_tries, consumed "  # noqa: S608
                f"FROM login_codes WHERE login_id = ?{tx.for_update}",
                (login_id,),
            )
            if not rows:
                return LoginCheck("unknown")
            principal_id, email, stored, expires_at, tries, max_tries, consumed = rows[0]
            if consumed:
                return LoginCheck("unknown")
            if int(expires_at) <= time.time():
                return LoginCheck("expired")
            if tries >= max_tries:
                return LoginCheck("too_many_tries")
            if hmac.compare_digest(str(stored), code_hash):
                tx.execute("UPDATE login_codes SET consumed = 1 WHERE login_id = ?", (login_id,))
                return LoginCheck("ok", principal_id=principal_id, email=email)
            tx.execute("UPDATE login_codes SET tries = tries + 1 WHERE login_id = ?", (login_id,))
            left = max_tries - tries - 1
            return LoginCheck("wrong_code" if left > 0 else "too_many_tries", tries_left=left)

        return await self._db.run(work, write=True)

    async def issue_token(
        self, *, token_hash: str, principal_id: str, email: str, expires_at: datetime
    ) -> None:
        row = (token_hash, principal_id, email, int(time.time()), _epoch(expires_at), 0)
        await self._db.run(
            lambda tx: tx.execute("INSERT INTO login_tokens VALUES (?,?,?,?,?,?)", row), write=True
        )

    async def find_token(self, token_hash: str) -> LoginToken | None:
        rows = await self._db.run(
            lambda tx: tx.execute(
                "SELECT principal_id, email, issued_at, expires_at FROM login_tokens "
                "WHERE token_hash = ? AND revoked = 0 AND expires_at > ?",
                (token_hash, int(time.time())),
            )
        )
        if not rows:
            return None
        principal_id, email, issued_at, expires_at = rows[0]
        return LoginToken(principal_id, email, _utc(issued_at), _utc(expires_at))

    async def revoke_token(self, token_hash: str) -> bool:
        n = await self._db.run(
            lambda tx: tx.rowcount(
                "UPDATE login_tokens SET revoked = 1 WHERE token_hash = ? AND revoked = 0", (token_hash,)
            ),
            write=True,
        )
        return n > 0

    async def revoke_principal_tokens(self, principal_id: str) -> int:
        return await self._db.run(
            lambda tx: tx.rowcount(
                "UPDATE login_tokens SET revoked = 1 WHERE principal_id = ? AND revoked = 0", (principal_id,)
            ),
            write=True,
        )


class SqlFreezes:
    """`FreezeStore`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def freeze_agent(self, *, principal_id: str, agent: str, reason: str = "") -> None:
        row = (principal_id, agent, int(time.time()), reason)
        await self._db.run(
            lambda tx: tx.execute("INSERT INTO agent_freezes VALUES (?,?,?,?) ON CONFLICT DO NOTHING", row),
            write=True,
        )

    async def unfreeze_agent(self, *, principal_id: str, agent: str) -> bool:
        n = await self._db.run(
            lambda tx: tx.rowcount(
                "DELETE FROM agent_freezes WHERE principal_id = ? AND agent = ?", (principal_id, agent)
            ),
            write=True,
        )
        return n > 0

    async def agent_freeze(self, *, principal_id: str, agent: str) -> AgentFreeze | None:
        rows = await self._db.run(
            lambda tx: tx.execute(
                "SELECT frozen_at, reason FROM agent_freezes WHERE principal_id = ? AND agent = ?",
                (principal_id, agent),
            )
        )
        return AgentFreeze(principal_id, agent, _utc(rows[0][0]), rows[0][1]) if rows else None

    async def revoke_session(self, *, session_id: str, principal_id: str, reason: str = "") -> None:
        row = (session_id, principal_id, int(time.time()), reason)
        await self._db.run(
            lambda tx: tx.execute(
                "INSERT INTO session_revocations VALUES (?,?,?,?) ON CONFLICT DO NOTHING", row
            ),
            write=True,
        )

    async def session_revocation(self, session_id: str) -> SessionRevocation | None:
        rows = await self._db.run(
            lambda tx: tx.execute(
                "SELECT principal_id, revoked_at, reason FROM session_revocations WHERE session_id = ?",
                (session_id,),
            )
        )
        return SessionRevocation(session_id, rows[0][0], _utc(rows[0][1]), rows[0][2]) if rows else None

    async def standing(self, *, principal_id: str, session_ids: list[str], agents: list[str]) -> Standing:
        def work(tx: Tx) -> Standing:
            revoked: set[str] = set()
            frozen: set[str] = set()
            if session_ids:
                marks = ", ".join("?" * len(session_ids))
                rows = tx.execute(
                    f"SELECT session_id FROM session_revocations WHERE session_id IN ({marks})",  # noqa: S608
                    session_ids,
                )
                revoked = {str(r[0]) for r in rows}
            if agents:
                marks = ", ".join("?" * len(agents))
                rows = tx.execute(
                    f"SELECT agent FROM agent_freezes WHERE principal_id = ? AND agent IN ({marks})",  # noqa: S608
                    [principal_id, *agents],
                )
                frozen = {str(r[0]) for r in rows}
            return Standing(
                revoked_sessions=[s for s in session_ids if s in revoked],
                frozen_agents=[a for a in agents if a in frozen],
            )

        return await self._db.run(work)
