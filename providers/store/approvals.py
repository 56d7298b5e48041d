"""The pending-approvals read model (`PendingApprovalStore`): one row per approval a workflow opened,
written by the `notify_approval` activity before the human gets the code and closed by the
`close_approval` activity when the gate closes. The API reads it paged, by principal, so listing a
human's approvals costs an index range scan, not a visibility query and a memo per waiting request.

The request (summary and details, which may hold a Checkout or OAuth URL) is sealed before it is
written; the principal id, kind and times stay clear, because the listing filters and orders on them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from models.approval import APPROVALS_PAGE_MAX, ApprovalRequest
from providers.store.database import Database, Tx
from providers.store.interfaces import Sealer

#: workflow ids per `waiting_among` query (well under SQLite's and PostgreSQL's parameter limits)
WAITING_BATCH = 500


class InvalidCursorError(ValueError):
    """A cursor that this store did not hand out (malformed); nothing is read."""


@dataclass(frozen=True)
class ApprovalPage:
    items: list[ApprovalRequest]
    #: pass back to read the next page; None on the last page
    next_cursor: str | None


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def encode_cursor(requested_ms: int, approval_id: str) -> str:
    raw = json.dumps([requested_ms, approval_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ms, approval_id = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise InvalidCursorError("malformed cursor") from exc
    if not isinstance(ms, int) or not isinstance(approval_id, str):
        raise InvalidCursorError("malformed cursor")
    return ms, approval_id


class SqlPendingApprovals:
    """`PendingApprovalStore` over one `Database`."""

    def __init__(self, db: Database, sealer: Sealer | None = None) -> None:
        self._db = db
        self._sealer = sealer

    def _seal(self, text: str) -> str:
        if self._sealer is None:
            raise RuntimeError("this process holds no seal key: it cannot write approvals")
        return self._sealer.seal(text)

    async def open_approval(self, request: ApprovalRequest) -> None:
        """Idempotent: a retried notice keeps the first row, and a closed approval stays closed."""
        row = (
            request.approval_id,
            request.principal_id,
            request.workflow_id,
            request.kind,
            _ms(request.requested_at),
            _ms(request.expires_at),
            self._seal(request.model_dump_json()),
        )
        await self._db.run(
            lambda tx: tx.execute(
                "INSERT INTO pending_approvals (approval_id, principal_id, workflow_id, kind, "
                "requested_ms, expires_ms, request) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                row,
            ),
            write=True,
        )

    async def close_approval(self, approval_id: str, *, closed_at: datetime | None = None) -> bool:
        """Mark it closed (decided, timed out, satisfied otherwise); False when it was not open."""
        at = _ms(closed_at or datetime.now(UTC))
        changed = await self._db.run(
            lambda tx: tx.rowcount(
                "UPDATE pending_approvals SET closed_ms = ? WHERE approval_id = ? AND closed_ms IS NULL",
                (at, approval_id),
            ),
            write=True,
        )
        return changed > 0

    async def waiting(self, workflow_id: str) -> bool:
        """Does this workflow have an open approval (is it waiting for a human)?"""
        return workflow_id in await self.waiting_among([workflow_id])

    async def waiting_among(self, workflow_ids: Sequence[str]) -> set[str]:
        """Which of these workflows have an open approval: one query for up to `WAITING_BATCH` ids, so
        one look answers every request the API is following (`quartermaster.orchestration.watch`)."""
        found: set[str] = set()
        ids = list(dict.fromkeys(workflow_ids))
        for start in range(0, len(ids), WAITING_BATCH):
            chunk = ids[start : start + WAITING_BATCH]
            marks = ",".join("?" * len(chunk))  # placeholders only: the ids are parameters
            sql = "SELECT DISTINCT workflow_id FROM pending_approvals WHERE closed_ms IS NULL"
            sql += f" AND workflow_id IN ({marks})"

            def look(tx: Tx, sql: str = sql, chunk: list[str] = chunk) -> list[tuple[object, ...]]:
                return tx.execute(sql, chunk)

            found.update(str(r[0]) for r in await self._db.run(look))
        return found

    async def open_one(self, approval_id: str, *, now: datetime | None = None) -> ApprovalRequest | None:
        """The approval if it is open and unexpired (its sealed request, as the workflow sent it to
        the human), else None. One primary-key lookup, so a decision needs no workflow query."""
        now_ms = _ms(now or datetime.now(UTC))
        rows = await self._db.run(
            lambda tx: tx.execute(
                "SELECT request FROM pending_approvals WHERE approval_id = ? AND closed_ms IS NULL "
                "AND expires_ms > ?",
                (approval_id, now_ms),
            )
        )
        if not rows:
            return None
        if self._sealer is None:
            raise RuntimeError("this process holds no seal key: it cannot read approvals")
        found = ApprovalRequest.model_validate_json(self._sealer.unseal(str(rows[0][0])))
        return found if found.approval_id == approval_id else None  # the sealed copy decides

    async def pending(
        self,
        principal_id: str,
        *,
        cursor: str | None = None,
        limit: int = 100,
        now: datetime | None = None,
    ) -> ApprovalPage:
        """The principal's open, unexpired approvals, oldest first, `limit` at a time."""
        limit = max(1, min(limit, APPROVALS_PAGE_MAX))
        after = decode_cursor(cursor) if cursor else (-1, "")
        now_ms = _ms(now or datetime.now(UTC))

        def work(tx: Tx) -> list[tuple[int, str, str]]:
            rows = tx.execute(
                "SELECT requested_ms, approval_id, request FROM pending_approvals "
                "WHERE principal_id = ? AND closed_ms IS NULL AND expires_ms > ? "
                # a row value: SQLite and PostgreSQL seek the index to the cursor, where the same
                # test written with OR made every page scan from the first row (quadratic in pages)
                "AND (requested_ms, approval_id) > (?, ?) "
                "ORDER BY requested_ms, approval_id LIMIT ?",
                (principal_id, now_ms, after[0], after[1], limit + 1),
            )
            return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

        rows = await self._db.run(work)
        more = len(rows) > limit
        rows = rows[:limit]
        if self._sealer is None:
            raise RuntimeError("this process holds no seal key: it cannot read approvals")
        sealer = self._sealer
        items = [ApprovalRequest.model_validate_json(sealer.unseal(r[2])) for r in rows]
        items = [a for a in items if a.principal_id == principal_id]  # the sealed copy decides
        nxt = encode_cursor(rows[-1][0], rows[-1][1]) if more and rows else None
        return ApprovalPage(items=items, next_cursor=nxt)
