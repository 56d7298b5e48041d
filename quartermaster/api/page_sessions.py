"""Browser sessions for the approval pages (browsers cannot send the bearer header).

A page session is a random id in an HttpOnly, SameSite=Strict cookie; the API stores only its sha256.
It comes from one of two places:
- an **approval link** (from the notification): the session is scoped to that one approval and holds
  the sealed link (the code inside is what the API submits to the workflow). Each link opens one
  session only: its hash is recorded as used, so a replayed link is refused;
- the **login page** (e-mail, then the code from the channel): the session sees all of the human's
  pending approvals, and a decision needs the one-time code typed into the page.

The rows live in the one store (`providers.store`, `PageSessionStore`; `QM_DATABASE_URL`), shared by
every API replica: a session opened on one replica works on any other behind the load balancer.

A decision claims the approval in `page_decisions` first, so one approval is decided through the pages
at most once (the workflow refuses a second decision too). CSRF tokens are an HMAC of the session id
and the approval id under a key only the API holds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from providers.store.interfaces import PageSessionStore as PageSessionRows
from quartermaster.identity.approval_links import derive_key, link_hash

COOKIE = "qm_page"
LINK_SESSION_TTL = timedelta(minutes=15)
LOGIN_SESSION_TTL = timedelta(hours=12)


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
    """Page sessions over the store's `pages` rows: ids and links are hashed here, never stored."""

    def __init__(self, rows: PageSessionRows, *, principal_key: bytes) -> None:
        self._rows = rows
        self._csrf_key = derive_key(principal_key, b"quartermaster page csrf v1")

    async def link_used(self, token: str) -> bool:
        return await self._rows.link_used(link_hash(token))

    async def from_link(
        self, token: str, *, principal_id: str, email: str, approval_id: str, link_expires: datetime
    ) -> PageSession | None:
        """A session for one approval, or None when this link was already used (on any replica)."""
        sid = secrets.token_urlsafe(32)
        ttl = min(LINK_SESSION_TTL, link_expires - datetime.now(UTC) + timedelta(minutes=5))
        expires = datetime.now(UTC) + ttl
        opened = await self._rows.open_link_session(
            link_hash=link_hash(token),
            sid_hash=_sha(sid),
            principal_id=principal_id,
            email=email,
            approval_id=approval_id,
            sealed_link=token,
            expires_at=expires,
        )
        return PageSession(sid, principal_id, email, approval_id, token, expires) if opened else None

    async def from_login(self, *, principal_id: str, email: str) -> PageSession:
        sid = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + LOGIN_SESSION_TTL
        await self._rows.create_session(
            sid_hash=_sha(sid),
            principal_id=principal_id,
            email=email,
            approval_id=None,
            sealed_link=None,
            expires_at=expires,
        )
        return PageSession(sid, principal_id, email, None, None, expires)

    async def get(self, sid: str | None) -> PageSession | None:
        if not sid or len(sid) > 200:
            return None
        row = await self._rows.get_session(_sha(sid))
        if row is None:
            return None
        return PageSession(sid, row.principal_id, row.email, row.approval_id, row.sealed_link, row.expires_at)

    async def end(self, sid: str) -> None:
        await self._rows.end_session(_sha(sid))

    # ---- decisions ------------------------------------------------------------------------------
    async def claim_decision(self, session: PageSession, approval_id: str) -> bool:
        """True for the first decision of `approval_id` through the pages."""
        return await self._rows.claim_decision(approval_id=approval_id, sid_hash=_sha(session.sid))

    async def release_decision(self, approval_id: str) -> None:
        """Undo a claim the workflow did not accept (e.g. a mistyped code), so the human can retry."""
        await self._rows.release_decision(approval_id)

    # ---- CSRF -----------------------------------------------------------------------------------
    def csrf_token(self, session: PageSession, form: str) -> str:
        return hmac.new(self._csrf_key, f"{session.sid}:{form}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: PageSession, form: str, token: str) -> bool:
        return hmac.compare_digest(self.csrf_token(session, form), token or "")
