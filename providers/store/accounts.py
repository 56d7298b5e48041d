"""Linked accounts, pending OAuth (PKCE) state and terms acceptances, on either backend.

Account credentials and PKCE verifiers are sealed before they are written (the worker's AES-GCM seal
key), so the database alone reveals nothing, and they never enter Temporal history: workflows only
see `ConnectionRef`s.
"""

from __future__ import annotations

from datetime import UTC, datetime

from models.secret import Secret
from providers.store.database import Database, Tx
from providers.store.interfaces import PendingOAuth, Sealer, StoredConnection, TermsAcceptance


class _NoSealer:
    def seal(self, plaintext: str) -> str:
        raise RuntimeError("this process holds no seal key: it cannot write account credentials")

    unseal = seal


class SqlConnections:
    """`ConnectionStore`, `OAuthStateStore` and `TermsStore` over one `Database`."""

    def __init__(self, db: Database, sealer: Sealer | None = None) -> None:
        self._db = db
        self._sealer: Sealer = sealer or _NoSealer()

    # -- ConnectionStore -------------------------------------------------------------------------
    async def put_connection(
        self,
        *,
        principal_id: str,
        provider: str,
        account_id: str,
        link_action: str,
        credential: Secret,
        scopes: list[str],
    ) -> None:
        sealed = self._sealer.seal(credential.reveal())
        row = (principal_id, provider, account_id, link_action, sealed, " ".join(scopes), _now_iso())

        def work(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO connections VALUES (?,?,?,?,?,?,?) "
                "ON CONFLICT (principal_id, provider) DO UPDATE SET "
                "account_id=excluded.account_id, link_action=excluded.link_action, "
                "credential=excluded.credential, scopes=excluded.scopes, updated_at=excluded.updated_at",
                row,
            )

        await self._db.run(work, write=True)

    async def get_connection(self, *, principal_id: str, provider: str) -> StoredConnection | None:
        rows = await self._db.run(
            lambda tx: tx.execute(
                "SELECT account_id, link_action, credential, scopes FROM connections "
                "WHERE principal_id=? AND provider=?",
                (principal_id, provider),
            )
        )
        if not rows:
            return None
        account_id, link_action, sealed, scopes = rows[0]
        return StoredConnection(account_id, link_action, Secret(self._sealer.unseal(sealed)), scopes.split())

    # -- OAuthStateStore -------------------------------------------------------------------------
    async def put_oauth_pending(
        self, *, state: str, principal_id: str, provider: str, verifier: Secret, redirect_uri: str
    ) -> None:
        row = (state, principal_id, provider, self._sealer.seal(verifier.reveal()), redirect_uri, _now_iso())
        await self._db.run(
            lambda tx: tx.execute(
                "INSERT INTO oauth_pending VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING", row
            ),
            write=True,
        )

    async def get_oauth_pending(self, state: str) -> PendingOAuth | None:
        rows = await self._db.run(
            lambda tx: tx.execute(
                "SELECT principal_id, provider, verifier, redirect_uri FROM oauth_pending WHERE state=?",
                (state,),
            )
        )
        if not rows:
            return None
        principal_id, provider, sealed, redirect_uri = rows[0]
        return PendingOAuth(principal_id, provider, Secret(self._sealer.unseal(sealed)), redirect_uri)

    # -- TermsStore ------------------------------------------------------------------------------
    async def record_terms(
        self, *, principal_id: str, provider: str, terms_version: str, accepted_at: datetime, approval_id: str
    ) -> None:
        row = (principal_id, provider, terms_version, accepted_at.astimezone(UTC).isoformat(), approval_id)
        await self._db.run(
            lambda tx: tx.execute(
                "INSERT INTO terms_acceptances VALUES (?,?,?,?,?) ON CONFLICT DO NOTHING", row
            ),
            write=True,
        )

    async def accepted_terms(
        self, *, principal_id: str, provider: str, terms_version: str
    ) -> TermsAcceptance | None:
        rows = await self._db.run(
            lambda tx: tx.execute(
                "SELECT accepted_at, approval_id FROM terms_acceptances "
                "WHERE principal_id=? AND provider=? AND terms_version=?",
                (principal_id, provider, terms_version),
            )
        )
        return TermsAcceptance(rows[0][0], rows[0][1]) if rows else None


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
