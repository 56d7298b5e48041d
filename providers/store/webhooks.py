"""The Stripe webhook inbox's dedup records (`WebhookEventStore`), shared by every gateway replica."""

from __future__ import annotations

import time

from providers.store.database import Database, Tx


class SqlWebhookEvents:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def seen(self, event_id: str) -> bool:
        rows = await self._db.run(
            lambda tx: tx.execute("SELECT 1 FROM webhook_events WHERE id = ?", (event_id,))
        )
        return bool(rows)

    async def fired(self, customer: str, setup_intent: str) -> bool:
        rows = await self._db.run(
            lambda tx: tx.execute(
                "SELECT 1 FROM webhook_ready WHERE customer = ? AND setup_intent = ?",
                (customer, setup_intent),
            )
        )
        return bool(rows)

    async def record_event(self, event_id: str, kind: str, outcome: str) -> None:
        await self._db.run(lambda tx: _record(tx, event_id, kind, outcome), write=True)

    async def record_fired(self, customer: str, setup_intent: str, event_id: str, kind: str) -> bool:
        def work(tx: Tx) -> bool:
            won = tx.rowcount(
                "INSERT INTO webhook_ready VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (customer, setup_intent, event_id, int(time.time())),
            )
            _record(tx, event_id, kind, "handled" if won else "already_handled")
            return won > 0

        return await self._db.run(work, write=True)


def _record(tx: Tx, event_id: str, kind: str, outcome: str) -> None:
    tx.execute(
        "INSERT INTO webhook_events VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (event_id, kind, outcome, int(time.time())),
    )
