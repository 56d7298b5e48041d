"""Human logins and the API's own kill-switch record, on the one shared store (`providers.store`).

Server side. Only hashes are stored: a login code as HMAC(server key, login id + code), a token as
sha256 (tokens are 256-bit random). Freezes and session revocations are written here before the
workflows are told and checked on every agent call, so a reset of a workflow cannot undo them. Every
API replica and worker shares the store (`QM_DATABASE_URL`), so a login made through one replica works
on all of them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from providers.store import Store, token_hash
from providers.store.interfaces import Standing

TOKEN_PREFIX = "qmh_"  # noqa: S105 - a prefix, not a secret
LOGIN_CODE_TRIES = 5
#: principals' emails kept in memory per process (cleared when full)
EMAILS_KEPT = 10_000


@dataclass(frozen=True)
class HumanLogin:
    principal_id: str
    email: str
    expires_at: datetime


class LoginStore:
    """Logins, tokens, principals' emails and the API's own freeze/revocation list."""

    def __init__(self, store: Store, *, code_key: bytes) -> None:
        self._store = store
        self._key = code_key
        #: principal id -> email, once known: the id is a keyed hash of the email, so it never changes
        self._emails: dict[str, str] = {}

    def _code_hash(self, login_id: str, code: str) -> str:
        return hmac.new(self._key, f"login:{login_id}:{code}".encode(), hashlib.sha256).hexdigest()

    # ---- login codes ----------------------------------------------------------------------------
    async def start(self, *, principal_id: str, email: str, ttl: timedelta) -> tuple[str, str, datetime]:
        """A new login: (login id, code for the human's channel only, expiry)."""
        login_id = "login_" + secrets.token_hex(12)
        code = "-".join(f"{secrets.randbelow(10**4):04d}" for _ in range(3))
        expires = datetime.now(UTC) + ttl
        await self._store.logins.start_login(
            login_id=login_id,
            principal_id=principal_id,
            email=email,
            code_hash=self._code_hash(login_id, code),
            expires_at=expires,
            max_tries=LOGIN_CODE_TRIES,
        )
        return login_id, code, expires

    async def redeem(self, login_id: str, code: str, *, token_ttl: timedelta) -> tuple[str, HumanLogin]:
        """Trade a login code for a token. Raises LookupError(reason) when refused; a wrong code uses
        one of LOGIN_CODE_TRIES, an empty one never does."""
        if not code.strip():
            raise LookupError("give the code you received")
        check = await self._store.logins.check_login_code(
            login_id=login_id, code_hash=self._code_hash(login_id, code.strip())
        )
        if check.outcome != "ok" or check.principal_id is None or check.email is None:
            reasons = {
                "wrong_code": f"wrong code ({check.tries_left} tries left)",
                "expired": "this login code has expired or was already used",
                "too_many_tries": "too many wrong codes: start a new login",
                "unknown": "unknown login",
            }
            raise LookupError(reasons.get(check.outcome, "login refused"))
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        exp = datetime.now(UTC) + token_ttl
        await self._store.logins.issue_token(
            token_hash=token_hash(token), principal_id=check.principal_id, email=check.email, expires_at=exp
        )
        return token, HumanLogin(principal_id=check.principal_id, email=check.email, expires_at=exp)

    async def human(self, token: str) -> HumanLogin | None:
        """The login a token stands for, while it is valid."""
        found = await self._store.logins.find_token(token_hash(token))
        if found is None:
            return None
        return HumanLogin(principal_id=found.principal_id, email=found.email, expires_at=found.expires_at)

    async def logout(self, token: str) -> None:
        await self._store.logins.revoke_token(token_hash(token))

    # ---- principals, freezes, revocations --------------------------------------------------------
    async def email_of(self, principal_id: str) -> str | None:
        """The principal's email (only a known one is kept: a principal may log in later)."""
        email = self._emails.get(principal_id)
        if email is None:
            email = await self._store.logins.email_of(principal_id)
            if email is not None:
                if len(self._emails) >= EMAILS_KEPT:
                    self._emails.clear()
                self._emails[principal_id] = email
        return email

    async def set_frozen(self, principal_id: str, agent: str, frozen: bool) -> None:
        if frozen:
            await self._store.freezes.freeze_agent(
                principal_id=principal_id, agent=agent, reason="kill switch"
            )
        else:
            await self._store.freezes.unfreeze_agent(principal_id=principal_id, agent=agent)

    async def frozen(self, principal_id: str, agents: list[str]) -> list[str]:
        """Which of these agents of the principal are frozen (one read)."""
        return (await self.standing(principal_id, [], agents)).frozen_agents

    async def revoke_sessions(self, session_ids: list[str], *, principal_id: str = "") -> None:
        for sid in session_ids:
            await self._store.freezes.revoke_session(
                session_id=sid, principal_id=principal_id, reason="revoked"
            )

    async def standing(self, principal_id: str, session_ids: list[str], agents: list[str]) -> Standing:
        """An agent call's kill-switch record (revoked sessions of its chain, frozen agents), one read."""
        return await self._store.freezes.standing(
            principal_id=principal_id, session_ids=session_ids, agents=agents
        )
