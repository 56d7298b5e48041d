"""The approval pages' browser sessions (`PageSessionStore`) and the deployment's published key set
(`KeySetStore`): small rows every API replica (and, for the key set, every worker) shares.

A session is found by the sha256 of its cookie; a link by its hash; both are computed by the API
(`quartermaster/api/page_sessions.py`), so the store never sees a cookie or a link's code.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

from providers.store.database import Database, Tx
from providers.store.interfaces import PublishedKeySet, StoredPageSession


def _epoch(moment: datetime) -> int:
    if moment.utcoffset() is None:
        raise ValueError("times must be timezone-aware")
    return int(moment.timestamp())


class SqlPageSessions:
    """`PageSessionStore`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @staticmethod
    def _insert(tx: Tx, row: tuple[object, ...]) -> None:
        # purge what expired a day ago: sessions live 12 h at most, links far less
        tx.execute("DELETE FROM page_sessions WHERE expires_at < ?", (int(time.time()) - 86_400,))
        tx.execute("INSERT INTO page_sessions VALUES (?,?,?,?,?,?,0)", row)

    async def create_session(
        self,
        *,
        sid_hash: str,
        principal_id: str,
        email: str,
        approval_id: str | None,
        sealed_link: str | None,
        expires_at: datetime,
    ) -> None:
        row = (sid_hash, principal_id, email, approval_id, sealed_link, _epoch(expires_at))
        await self._db.run(lambda tx: self._insert(tx, row), write=True)

    async def open_link_session(
        self,
        *,
        link_hash: str,
        sid_hash: str,
        principal_id: str,
        email: str,
        approval_id: str,
        sealed_link: str,
        expires_at: datetime,
    ) -> bool:
        row = (sid_hash, principal_id, email, approval_id, sealed_link, _epoch(expires_at))

        def work(tx: Tx) -> bool:
            # the primary key decides between two replicas opening the same link at once
            won = tx.rowcount(
                "INSERT INTO approval_links_used VALUES (?, ?) ON CONFLICT DO NOTHING",
                (link_hash, int(time.time())),
            )
            if won:
                self._insert(tx, row)
            return won > 0

        return await self._db.run(work, write=True)

    async def link_used(self, link_hash: str) -> bool:
        rows = await self._db.run(
            lambda tx: tx.execute("SELECT 1 FROM approval_links_used WHERE link_hash = ?", (link_hash,))
        )
        return bool(rows)

    async def get_session(self, sid_hash: str) -> StoredPageSession | None:
        rows = await self._db.run(
            lambda tx: tx.execute(
                "SELECT principal_id, email, approval_id, sealed_link, expires_at FROM page_sessions "
                "WHERE sid_hash = ? AND revoked = 0 AND expires_at > ?",
                (sid_hash, int(time.time())),
            )
        )
        if not rows:
            return None
        principal_id, email, approval_id, sealed, expires_at = rows[0]
        return StoredPageSession(
            str(principal_id),
            str(email),
            None if approval_id is None else str(approval_id),
            None if sealed is None else str(sealed),
            datetime.fromtimestamp(int(expires_at), UTC),
        )

    async def end_session(self, sid_hash: str) -> None:
        await self._db.run(
            lambda tx: tx.execute("UPDATE page_sessions SET revoked = 1 WHERE sid_hash = ?", (sid_hash,)),
            write=True,
        )

    async def claim_decision(self, *, approval_id: str, sid_hash: str) -> bool:
        won = await self._db.run(
            lambda tx: tx.rowcount(
                "INSERT INTO page_decisions VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (approval_id, sid_hash, int(time.time())),
            ),
            write=True,
        )
        return won > 0

    async def release_decision(self, approval_id: str) -> None:
        await self._db.run(
            lambda tx: tx.execute("DELETE FROM page_decisions WHERE approval_id = ?", (approval_id,)),
            write=True,
        )


class SqlKeySets:
    """`KeySetStore`: one row, replaced by compare-and-set on its version."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def published_now(self) -> PublishedKeySet | None:
        rows = self._db.run_sync(
            lambda tx: tx.execute(
                "SELECT version, fingerprints, publisher, published_at FROM published_keys WHERE id = 1"
            )
        )
        if not rows:
            return None
        version, doc, publisher, published_at = rows[0]
        return PublishedKeySet(
            int(version), json.loads(doc), str(publisher), datetime.fromtimestamp(int(published_at), UTC)
        )

    def publish_now(self, *, fingerprints: dict[str, list[list[str]]], publisher: str, replaces: int) -> bool:
        doc = json.dumps(fingerprints, sort_keys=True)
        now = int(time.time())

        def work(tx: Tx) -> bool:
            if replaces == 0:
                return (
                    tx.rowcount(
                        "INSERT INTO published_keys VALUES (1, 1, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (doc, publisher, now),
                    )
                    > 0
                )
            return (
                tx.rowcount(
                    "UPDATE published_keys SET version = version + 1, fingerprints = ?, publisher = ?, "
                    "published_at = ? WHERE id = 1 AND version = ?",
                    (doc, publisher, now, replaces),
                )
                > 0
            )

        return self._db.run_sync(work, write=True)

    async def published_keys(self) -> PublishedKeySet | None:
        return await asyncio.to_thread(self.published_now)

    async def publish_keys(
        self, *, fingerprints: dict[str, list[list[str]]], publisher: str, replaces: int
    ) -> bool:
        return await asyncio.to_thread(
            self.publish_now, fingerprints=fingerprints, publisher=publisher, replaces=replaces
        )
