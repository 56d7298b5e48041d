"""`qm audit`: query, trace, verify and export the audit trail (see docs/audit.md).

qm audit [--principal EMAIL] [--agent A] [--session S] [--provider P] [--since ISO|1h|7d] [--json]
qm audit trace REQUEST_OR_RESOURCE [--json]
qm audit verify [--json]                       # exit 0 intact, 1 broken (first broken seq)
qm audit export --format jsonl|ocsf [--output FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from models.errors import ErrorCode, QuartermasterError
from quartermaster.cli.output import add_common, emit, table
from quartermaster.config import Settings

if TYPE_CHECKING:  # operator verbs: the audit store is imported when one runs, never by `qm` itself
    from providers.audit import AuditStore, StoredAuditRecord
    from providers.audit.trace import AuditTrace

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_OPAQUE_PRINCIPAL = re.compile(r"^p[0-9a-f]{20}$")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("audit", help="query, trace, verify and export the audit trail")
    add_common(p)
    p.add_argument("--principal", metavar="EMAIL", help="the human (stored only as an opaque id)")
    p.add_argument("--agent", metavar="A", help="an agent anywhere in the attested chain")
    p.add_argument("--session", metavar="S")
    p.add_argument("--provider", metavar="P")
    p.add_argument("--action", metavar="ACTION", help="e.g. charge.made")
    p.add_argument("--since", metavar="ISO|1h|7d", help="ISO 8601 time (UTC if no offset) or a duration ago")
    p.add_argument("--limit", type=int, metavar="N")
    p.set_defaults(handler=run_query)
    verbs = p.add_subparsers(dest="audit_verb", metavar="SUBVERB")

    t = verbs.add_parser("trace", help="the full story of one purchase, request to credential")
    t.add_argument("subject", metavar="REQUEST_OR_RESOURCE")
    _add_json(t)
    t.set_defaults(handler=run_trace)

    v = verbs.add_parser("verify", help="check the hash chain; exit 1 at the first broken record")
    _add_json(v)
    v.set_defaults(handler=run_verify)

    e = verbs.add_parser("export", help="every record as JSON lines or OCSF 1.7.0 events")
    e.add_argument("--format", choices=("jsonl", "ocsf"), default="jsonl")
    e.add_argument("--output", type=Path, metavar="FILE", help="default: standard output")
    _add_json(e)
    e.set_defaults(handler=run_export)


def _add_json(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps `qm audit --json trace X` working: the sub-verb's default must not reset it
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )


def _store() -> AuditStore:
    from providers.audit import open_audit_store

    location = Settings.from_env().resolved_audit_db
    if "://" not in location and not Path(location).exists():
        raise QuartermasterError(ErrorCode.NOT_FOUND, f"no audit store at {location}")
    return open_audit_store(location)


# -- qm audit ----------------------------------------------------------------------------------------
def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`1h`, `7d`, `30m`, `2w`, `45s` ago, or an ISO 8601 time (UTC when it has no offset)."""
    m = _RELATIVE.match(text.strip())
    if m:
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise QuartermasterError(
            ErrorCode.INVALID_REQUEST, "--since takes an ISO 8601 time or a duration like 1h, 7d"
        ) from None
    return moment if moment.utcoffset() is not None else moment.replace(tzinfo=UTC)


def principal_filter(value: str) -> str:
    """An email becomes the keyring's opaque principal id; an opaque id passes through."""
    if _OPAQUE_PRINCIPAL.match(value):
        return value
    if "@" not in value:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "--principal takes an email address")
    from quartermaster.keys import load_keyring

    keys_file = Settings.from_env().resolved_keys_file
    try:
        keyring = load_keyring(keys_file)
    except FileNotFoundError:
        raise QuartermasterError(
            ErrorCode.INVALID_CONFIGURATION, f"no key file at {keys_file}: cannot derive principal ids"
        ) from None
    try:
        return keyring.principal_id(value)
    except RuntimeError:
        raise QuartermasterError(
            ErrorCode.INVALID_CONFIGURATION, "the key file has no principal key"
        ) from None


def run_query(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "--limit must be at least 1")
    from providers.audit import AuditFilters

    filters = AuditFilters(
        principal_id=principal_filter(args.principal) if args.principal else None,
        agent=args.agent,
        session_id=args.session,
        provider=args.provider,
        action=args.action,
        since=parse_since(args.since) if args.since else None,
        limit=args.limit,
    )
    store = _store()
    try:
        records = store.query(filters)
    finally:
        store.close()
    emit(args, records, table([_row(r) for r in records], list(_row_columns())))
    return 0


def _row_columns() -> tuple[str, ...]:
    return ("seq", "time", "action", "outcome", "principal", "agents", "provider", "request", "detail")


def _row(r: StoredAuditRecord) -> dict[str, Any]:
    e = r.event
    return {
        "seq": r.seq,
        "time": e.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "action": e.action,
        "outcome": e.outcome,
        "principal": e.principal_id or "",
        "agents": " > ".join(e.agent_chain),
        "provider": _service_column(e.provider, e.service_id),
        "request": e.request_id or "",
        "detail": _detail(r),
    }


def _service_column(provider: str | None, service_id: str | None) -> str:
    """`cloud/r2` (a service id already names its provider), else the provider alone."""
    if service_id:
        named = not provider or service_id.startswith(f"{provider}/")
        return service_id if named else f"{provider}/{service_id}"
    return provider or ""


def _detail(r: StoredAuditRecord) -> str:
    e = r.event
    parts = [
        f"amount={e.amount}" if e.amount else "",
        f"approved_by={e.approved_by}" if e.approved_by else "",
        f"resource={e.resource_id}" if e.resource_id else "",
        f"credential={e.credential_id}" if e.credential_id else "",
        f"reason={e.reason}" if e.reason else "",
    ]
    return " ".join(p for p in parts if p)


# -- qm audit trace ----------------------------------------------------------------------------------
def run_trace(args: argparse.Namespace) -> int:
    store = _store()
    try:
        from providers.audit.trace import build_trace

        trace = build_trace(store, args.subject)
    finally:
        store.close()
    if trace is None:
        raise QuartermasterError(ErrorCode.NOT_FOUND, f"no audit events for {args.subject}")
    emit(args, trace, render_trace(trace))
    return 0


def render_trace(trace: AuditTrace) -> str:
    """The story for people: who, through which agents, then every step in order."""
    lines = [
        f"purchase {', '.join(trace.request_ids) or trace.subject}",
        f"chain: {' -> '.join(trace.chain) or '(none)'}",
    ]
    for a in trace.approvals:
        who = f" by {a.approved_by}" if a.approved_by else ""
        lines.append(f"approval: {a.action}{who} (seq {a.seq})")
    for c in trace.charges:
        lines.append(f"charge: {c.amount or '?'} at {c.provider or '?'} ({c.outcome}, seq {c.seq})")
    if trace.credential_ids:
        lines.append(f"credentials: {', '.join(trace.credential_ids)}")
    lines += ["", table([_row(r) for r in trace.records], list(_row_columns()))]
    return "\n".join(lines)


# -- qm audit verify ---------------------------------------------------------------------------------
def run_verify(args: argparse.Namespace) -> int:
    store = _store()
    try:
        report = store.verify()
    finally:
        store.close()
    if report.ok:
        text = f"audit trail intact: {report.records} records, head seq {report.head_seq} {report.head_hash}"
    else:
        text = f"audit trail BROKEN at seq {report.first_broken_seq}: {report.reason}"
    emit(args, report, text)
    return 0 if report.ok else 1


# -- qm audit export ---------------------------------------------------------------------------------
def run_export(args: argparse.Namespace) -> int:
    store = _store()
    try:
        if args.output is None:
            count = _export(store, args.format, sys.stdout)
        else:
            with args.output.open("w", encoding="utf-8") as out:
                count = _export(store, args.format, out)
    finally:
        store.close()
    if args.output is not None:
        emit(args, {"exported": count, "format": args.format, "output": str(args.output)},
             f"exported {count} records to {args.output} ({args.format})")  # fmt: skip
    return 0


def _export(store: AuditStore, fmt: str, out: IO[str]) -> int:
    count = 0
    for record in store.iter_all():
        if fmt == "ocsf":
            from providers.audit.ocsf import to_ocsf

            doc: dict[str, Any] = to_ocsf(record)
        else:
            doc = {"seq": record.seq, "prev_hash": record.prev_hash, "hash": record.hash,
                   "event": record.event.model_dump(mode="json")}  # fmt: skip
        out.write(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
        count += 1
    return count
