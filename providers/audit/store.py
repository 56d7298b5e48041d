"""The audit store's interface and the hash chain every implementation shares.

A record is `(seq, event_id, event_json, prev_hash, hash)` where `event_json` is the canonical JSON
of the event (sorted keys, no spaces, UTC time, secrets redacted) and
`hash = sha256(prev_hash + event_json)`; the first record's `prev_hash` is 64 zeros. Editing a row
breaks its own hash; deleting one breaks the sequence and the next row's `prev_hash`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from models.audit import AuditEvent
from models.secret import REDACTED, SECRET_MARKER, Secret

GENESIS_HASH = "0" * 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: values sealed by quartermaster.codec: ciphertext, but still nothing an audit log needs
_SEALED_PREFIX = "qmsealed:"
#: detail keys whose values are credentials whatever they look like
_SECRET_KEYS = frozenset(
    {
        "password",
        "secret",
        "token",
        "api_key",
        "apikey",
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "authorization",
        "private_key",
        "webhook_secret",
    }
)
#: value prefixes of live credentials (Stripe secret/restricted keys, webhook secrets)
_SECRET_PREFIXES = ("sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_")


class AuditStoreError(Exception):
    """The store cannot do what was asked (unreadable record, bad event). Never carries event content."""


class AuditFilters(BaseModel):
    """What `query` selects; every given field must match (AND)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    principal_id: str | None = None
    #: matches an agent anywhere in the attested chain
    agent: str | None = None
    session_id: str | None = None
    provider: str | None = None
    request_id: str | None = None
    resource_id: str | None = None
    workflow_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None

    @field_validator("since", "until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("since/until must be timezone-aware")
        return value

    def matches(self, event: AuditEvent) -> bool:
        """The filter applied to the hashed event itself (SQL pre-selects; this decides)."""
        simple = {
            "principal_id": event.principal_id,
            "provider": event.provider,
            "request_id": event.request_id,
            "resource_id": event.resource_id,
            "workflow_id": event.workflow_id,
            "action": event.action,
        }
        for name, value in simple.items():
            wanted = getattr(self, name)
            if wanted is not None and wanted != value:
                return False
        if self.agent is not None and self.agent not in event.agent_chain:
            return False
        if self.session_id is not None and self.session_id not in event.session_ids:
            return False
        if self.since is not None and event.time < self.since:
            return False
        return not (self.until is not None and event.time > self.until)


class StoredAuditRecord(BaseModel):
    """One record of the chain as stored."""

    model_config = ConfigDict(frozen=True)

    seq: int
    event: AuditEvent
    prev_hash: str
    hash: str


class VerifyReport(BaseModel):
    """The outcome of checking the whole chain. `first_broken_seq` is the first record that fails."""

    ok: bool
    records: int
    first_broken_seq: int | None = None
    reason: str | None = None
    head_seq: int | None = None
    #: anchor this value elsewhere (a ticket, a SIEM) to detect a rewrite of the whole tail later
    head_hash: str | None = None


@runtime_checkable
class AuditStore(Protocol):
    """An append-only, hash-chained store of audit events."""

    def append(self, event: AuditEvent) -> bool:
        """Store `event`; False (and nothing written) when its `event_id` is already stored."""
        ...

    def append_many(self, events: Sequence[AuditEvent]) -> list[bool]:
        """Store `events` in order, atomically; for each, False when its `event_id` was already stored."""
        ...

    def query(self, filters: AuditFilters | None = None) -> list[StoredAuditRecord]:
        """Records matching `filters`, in chain order."""
        ...

    def verify(self) -> VerifyReport:
        """Check every record's hash, link and sequence, and the head pointer."""
        ...

    def iter_all(self) -> Iterator[StoredAuditRecord]:
        """Every record in chain order, read in pages."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# -- canonical form --------------------------------------------------------------------------------
def _redact(value: Any, key: str | None = None) -> Any:
    if isinstance(value, Secret) or (key is not None and key.lower() in _SECRET_KEYS):
        return REDACTED
    if isinstance(value, dict):
        if SECRET_MARKER in value:
            return REDACTED
        return {str(k): _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    if isinstance(value, str) and value.startswith((_SEALED_PREFIX, *_SECRET_PREFIXES)):
        return REDACTED
    return value


def normalized(event: AuditEvent) -> AuditEvent:
    """The event as it will be stored: time in UTC, anything secret-looking in `details` redacted."""
    if event.time.tzinfo is None or event.time.utcoffset() is None:
        raise AuditStoreError("audit event time must be timezone-aware")
    details = _redact(event.details)
    try:
        # round-trip through JSON so details hold only JSON types, exactly what is hashed and read back
        details = json.loads(json.dumps(details, default=_refuse))
    except (TypeError, ValueError) as exc:
        raise AuditStoreError("audit event details must be JSON values") from exc
    return event.model_copy(update={"time": event.time.astimezone(UTC), "details": _redact(details)})


def _refuse(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def canonical_json(event: AuditEvent) -> str:
    """Sorted keys, no whitespace, UTF-8 kept: the exact text that is hashed and stored."""
    doc = normalized(event).model_dump(mode="json")
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, event_json: str) -> str:
    """SHA-256 over the previous record's hash followed by this record's canonical JSON."""
    return hashlib.sha256((prev_hash + event_json).encode()).hexdigest()


def time_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch (exact integer arithmetic, no float rounding)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def index_columns(event: AuditEvent) -> dict[str, Any]:
    """The columns stored beside the JSON for indexed queries; `verify` checks they agree with it."""
    return {
        "event_id": event.event_id,
        "time_ms": time_ms(event.time),
        "action": event.action,
        "principal_id": event.principal_id,
        "provider": event.provider,
        "request_id": event.request_id,
        "resource_id": event.resource_id,
        "workflow_id": event.workflow_id,
    }


INDEX_COLUMNS = tuple(index_columns(AuditEvent(event_id="x", time=_EPOCH, action="request.received")).keys())


def parse_event(event_json: str, seq: int) -> AuditEvent:
    """Parse a stored record; a tampered, unparseable one raises AuditStoreError naming its seq."""
    try:
        return AuditEvent.model_validate_json(event_json)
    except ValidationError as exc:
        raise AuditStoreError(f"audit record seq {seq} is not a valid event; run `qm audit verify`") from exc


# -- verification ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChainRow:
    """A raw row as read back for verification (the JSON text exactly as stored)."""

    seq: int
    event_json: str
    prev_hash: str
    hash: str
    columns: dict[str, Any]


def verify_rows(rows: Iterable[ChainRow], head: tuple[int, str] | None) -> VerifyReport:
    """Walk the chain in seq order; stop at the first record that does not hold."""
    expected_seq, expected_prev, count = 1, GENESIS_HASH, 0
    last: tuple[int, str] | None = None

    def broken(seq: int, reason: str) -> VerifyReport:
        return VerifyReport(
            ok=False,
            records=count,
            first_broken_seq=seq,
            reason=reason,
            head_seq=head[0] if head else None,
            head_hash=head[1] if head else None,
        )

    for row in rows:
        count += 1
        if row.seq != expected_seq:
            return broken(row.seq, f"sequence gap: expected seq {expected_seq}, a record is missing")
        if row.prev_hash != expected_prev:
            return broken(row.seq, "prev_hash does not match the previous record's hash")
        if chain_hash(row.prev_hash, row.event_json) != row.hash:
            return broken(row.seq, "hash does not match the record's content (edited)")
        try:
            event = AuditEvent.model_validate_json(row.event_json)
        except ValidationError:
            return broken(row.seq, "content is not a valid audit event")
        if index_columns(event) != row.columns:
            return broken(row.seq, "indexed columns differ from the hashed event (edited)")
        expected_seq, expected_prev, last = row.seq + 1, row.hash, (row.seq, row.hash)
    if head is None and last is not None:
        return broken(last[0], "the head pointer is missing")
    if head is not None and head != last:
        after = last[0] if last else 0
        if head[0] > after:
            return broken(after + 1, f"records after seq {after} are missing (the head is at {head[0]})")
        return broken(after, "the head pointer does not match the last record")
    return VerifyReport(
        ok=True,
        records=count,
        head_seq=last[0] if last else None,
        head_hash=last[1] if last else None,
    )
