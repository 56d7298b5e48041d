"""Verbs for agents and humans, all through the API: catalog, quote, provision, status, approvals,
approve/deny, inbox (dev), resources, show, remove, rotate."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import TYPE_CHECKING, Any

from models.api import ApprovalView, ProvisionView
from models.approval import HANDED_ON
from models.errors import ErrorCode, QuartermasterError, code_of, exit_code
from quartermaster.cli.output import add_common, emit, error_object, report_error, table, usd
from quartermaster.client import QuartermasterClient
from quartermaster.client.config import save_shown, shown_hash

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

MAX_CONFIG_DEPTH = 32
#: a request that ended undone or rejected: never 3, or an agent polling on "waiting" loops forever
UNDONE_EXIT = 4


def _depth(value: Any, limit: int) -> bool:
    """True when `value` nests deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _config(text: str) -> dict[str, Any]:
    if len(text) > 100_000:
        raise argparse.ArgumentTypeError("--config is larger than 100 kB")
    try:
        value = json.loads(text)
    except RecursionError:
        raise argparse.ArgumentTypeError(f"--config is nested deeper than {MAX_CONFIG_DEPTH}") from None
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--config is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--config must be a JSON object")
    if _depth(value, MAX_CONFIG_DEPTH):
        raise argparse.ArgumentTypeError(f"--config is nested deeper than {MAX_CONFIG_DEPTH}")
    return value


def _parser(sub: Sub, name: str, help_: str, handler: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_)
    add_common(p)
    p.set_defaults(handler=handler)
    return p


def register(sub: Sub) -> None:
    p = _parser(sub, "catalog", "list the services of every provider (or one)", catalog)
    p.add_argument("provider", nargs="?")
    p = _parser(sub, "quote", "price a service without starting anything", quote)
    p.add_argument("service", metavar="PROVIDER/SERVICE")
    p.add_argument("--config", type=_config, default={})
    p.add_argument("--max-price", type=usd)
    p = _parser(sub, "provision", "provision a service and get a scoped credential", provision)
    p.add_argument("service", metavar="PROVIDER/SERVICE")
    p.add_argument("--name", required=True)
    p.add_argument("--config", type=_config, default={})
    p.add_argument("--max-price", type=usd, help="the most the agent accepts to pay now (USD)")
    p.add_argument("--budget", type=usd, help="a budget for this request under the monthly cap (USD)")
    p.add_argument("--scope", action="append", default=[], help="a credential scope (repeatable)")
    p.add_argument("--ttl", type=int, default=3600, help="credential lifetime in seconds (60..86400)")
    p.add_argument("--request-id", help="your idempotency key for the whole request (default: random)")
    p.add_argument("--wait", type=float, default=60, help="seconds to wait for the result (default 60)")
    p = _parser(sub, "status", "show a request: its result, or what it waits for", status)
    p.add_argument("request_id")
    p.add_argument("--wait", type=float, default=0)
    _parser(sub, "approvals", "list approvals waiting for you (human login)", approvals)
    for verb in ("approve", "deny"):
        p = _parser(sub, verb, f"{verb} a pending approval with its one-time code (human login)", decide)
        p.add_argument("approval_id")
        p.add_argument("--code", required=True, help="the one-time code delivered to you")
        p.add_argument(
            "--view-hash",
            help="bind to this view_hash (default: the one `qm approvals` showed, else the current one)",
        )
        p.set_defaults(decision=verb)
        if verb == "deny":
            p.add_argument("--reason", required=True)
        else:
            p.add_argument("--info", type=_config, help="JSON object of requested information")
    p = _parser(sub, "inbox", "show a human's dev inbox (codes for login and approvals; qm dev only)", inbox)
    p.add_argument("--email", required=True)
    _parser(sub, "resources", "list your resources and their credentials' names", resources)
    p = _parser(sub, "show", "show one resource", show)
    p.add_argument("resource_id")
    p = _parser(sub, "remove", "remove a resource at its provider (revokes its credentials)", remove)
    p.add_argument("resource_id")
    p = _parser(sub, "rotate", "mint a new credential for a resource and revoke the old one", rotate)
    p.add_argument("resource_id")


async def catalog(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        cats = await qm.catalog.list(args.provider)
    rows = [
        {
            "service": s.service_id,
            "kind": s.kind,
            "price": str(s.pricing.price) + f"/{s.pricing.interval}" if s.pricing.price else "free",
            "reversible": "yes" if s.reversible else "NO",
            "terms": c.provider.terms_version,
        }
        for c in cats
        for s in c.services
    ]
    emit(args, cats, table(rows, ["service", "kind", "price", "reversible", "terms"]))
    return 0


async def quote(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        q = await qm.quotes.create(args.service, args.config, args.max_price)
    text = (
        f"{q.service.service_id}: due now {q.due_now or 'nothing (free)'}"
        + (f", then {q.recurring} per {q.interval}" if q.recurring else "")
        + ("" if q.reversible else "; NOT reversible")
        + f"; terms {q.terms_version} ({q.tos_url})"
        + "".join(f"\n{w.code}: {w.message}" for w in q.warnings)
    )
    if q.forecast is not None and q.forecast.months:
        rows = [
            {"month": m.month, "with this purchase": m.total, "limit": m.limit,
             "over": "OVER" if m.over_limit else ""}
            for m in q.forecast.months
        ]  # fmt: skip
        text += "\n" + table(rows, ["month", "with this purchase", "limit", "over"])
        if q.forecast.over_limit_months:
            text += "\nits renewals would exceed the monthly limit in " + ", ".join(
                q.forecast.over_limit_months
            )
    emit(args, q, text)
    return 0


def print_view(args: argparse.Namespace, view: ProvisionView) -> int:
    """One request's state; exit 0 done, 3 waiting for a human, 1 undone/refused/failed."""
    data = view.model_dump(mode="json")
    if view.state == "completed":
        cred = view.credential
        text = (
            f"{view.service_id} {view.resource_id}: {view.resource_status}, account {view.link_action}"
            + (f", charged {view.charge}" if view.charge else "")
            + (
                f"\ncredential {cred.credential_id} ({', '.join(cred.names)}) expires {cred.expires_at}"
                f"\nuse it with: qm exec {view.resource_id} -- COMMAND"
                if cred
                else ""
            )
        )
        emit(args, data, text)
        return 0
    if view.state == "running":
        emit(
            args, data, f"request {view.request_id}: {view.step} (follow it with qm status {view.request_id})"
        )
        return 0
    err = view.error or {"code": "UNKNOWN_ERROR", "message": ""}
    code = code_of(err["code"])
    if view.state == "waiting_for_human":
        if args.json:
            print(json.dumps({"error": error_object(code, err["message"]), "request": data}))
        else:
            lines = [f"{code}: {err['message']}"]
            for w in view.waiting_for:
                lines.append(f"  approval {w.approval_id}: the principal was asked on {w.asked_via}")
            lines.append(f"  follow it with: qm status {view.request_id} --wait 60")
            print("\n".join(lines), file=sys.stderr)
        return 3
    message = f"{err['message']} ({view.state}" + (
        f": {', '.join(view.compensations)})" if view.compensations else ")"
    )
    if args.json:
        print(json.dumps({"error": error_object(code, message), "request": data}))
    else:
        report_error(args, code, message)
    return UNDONE_EXIT


async def provision(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        view = await qm.provisions.create(
            service_id=args.service,
            name=args.name,
            request_id=args.request_id or uuid.uuid4().hex[:16],
            configuration=args.config,
            max_price=args.max_price,
            budget=args.budget,
            scopes=args.scope,
            credential_ttl_seconds=args.ttl,
        )
        progress = _progress(args)
        if progress is not None:
            progress(view)
        if args.wait > 0 and (view.state == "running" or progress is not None):
            view = await qm.provisions.wait(
                view.request_id, timeout=args.wait, on_progress=progress, through_humans=progress is not None
            )
    return print_view(args, view)


def interactive(args: argparse.Namespace) -> bool:
    """A person at a terminal (not --json, stderr a tty): show progress, follow through human gates."""
    return not getattr(args, "json", False) and sys.stderr.isatty()


def _progress(args: argparse.Namespace) -> Any:
    """On a terminal, show each new step and what the human must do while waiting; quiet with --json
    (an agent gets one answer, and exit code 3 at the first human gate)."""
    if not interactive(args):
        return None
    seen: set[str] = set()

    def show(view: ProvisionView) -> None:
        if view.step and view.step not in seen and not view.step.startswith("awaiting"):
            seen.add(view.step)
            print(f"  ... {view.step}", file=sys.stderr, flush=True)
        for w in view.waiting_for:
            if w.approval_id not in seen:
                seen.add(w.approval_id)
                print(
                    f"  ... waiting for you ({w.kind}): {w.summary}\n"
                    f"      the code is on {w.asked_via}: qm approvals, then qm approve {w.approval_id}"
                    " --code CODE (or open the link in the notification)",
                    file=sys.stderr,
                    flush=True,
                )

    return show


async def status(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        progress = _progress(args)
        view = await qm.provisions.wait(
            args.request_id, timeout=args.wait, on_progress=progress, through_humans=progress is not None
        )
    return print_view(args, view)


async def approvals(args: argparse.Namespace) -> int:
    """What waits for you, each with the `view_hash` of what is shown: `qm approve` sends it back, so
    a price, configuration or cap that changes in between voids the code (APPROVAL_CHANGED)."""
    async with QuartermasterClient.from_env() as qm:
        items = await qm.approvals.list()
        views: list[ApprovalView] = []
        for a in items:
            try:
                views.append(await qm.approvals.get(a.approval_id))
            except QuartermasterError:
                continue  # decided or closed since the listing
    save_shown({v.approval_id: v.view_hash for v in views if v.view_hash})
    rows = [
        {"approval": a.approval_id, "kind": a.kind, "summary": a.summary, "expires": a.expires_at}
        for a in views
    ]
    emit(args, views, table(rows, ["approval", "kind", "summary", "expires"]))
    return 0


async def decide(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        view = await qm.approvals.get(args.approval_id)
        if args.decision == "approve" and view.kind in HANDED_ON:
            key, label = HANDED_ON[view.kind]
            message = f"{label}: {view.details.get(key, '')} (the request goes on by itself; nothing decided)"
            if args.json:
                print(json.dumps({"error": error_object(ErrorCode.APPROVAL_HANDED_ON, message)}))
            else:
                print(f"{ErrorCode.APPROVAL_HANDED_ON}: {message}", file=sys.stderr)
            return exit_code(ErrorCode.APPROVAL_HANDED_ON)
        # bound to what `qm approvals` showed (else to what the API shows now)
        bound = args.view_hash or shown_hash(args.approval_id) or view.view_hash
        outcome = await qm.approvals.decide(
            args.approval_id,
            decision=args.decision,
            code=args.code,
            reason=getattr(args, "reason", None),
            information=getattr(args, "info", None),
            view_hash=bound,
        )
    past = "approved" if args.decision == "approve" else "denied"
    emit(args, outcome, f"{past} {args.approval_id}: {view.summary}")
    return 0


async def inbox(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        items = await qm.dev.inbox(args.email)
    rows = [
        {
            "approval": m.get("approval_id", m.get("login_id", "-")),
            "kind": m.get("kind", m.get("type")),
            "code": m.get("code", ""),
            "status": m.get("status", ""),
            "summary": m.get("summary", ""),
        }
        for m in items
    ]
    emit(args, items, table(rows, ["approval", "kind", "code", "status", "summary"]))
    return 0


async def resources(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        items = await qm.resources.list()
    rows = [r.model_dump() for r in items]
    emit(args, items, table(rows, ["resource_id", "service_id", "credential_id", "expires_at"]))
    return 0


async def show(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        info = await qm.resources.get(args.resource_id)
    emit(
        args,
        info,
        f"{info.resource_id} ({info.service_id}), request {info.request_id}\n"
        f"  credential {info.credential_id or '-'}: {', '.join(info.credential_names) or '-'}"
        f" expires {info.expires_at or '-'}",
    )
    return 0


async def remove(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        res = await qm.resources.remove(args.resource_id)
    return _action_outcome(args, res, f"removed {args.resource_id}")


async def rotate(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        res = await qm.resources.rotate(args.resource_id)
    cred = res.credential
    return _action_outcome(
        args, res, f"new credential {cred.credential_id} expires {cred.expires_at}" if cred else "rotated"
    )


def _action_outcome(args: argparse.Namespace, res: Any, text: str) -> int:
    if res.outcome != "completed":
        err = res.error or {}
        return report_error(args, code_of(err.get("code")), err.get("message") or "refused")
    emit(args, res, text)
    return 0


__all__ = ["ErrorCode", "QuartermasterError"]
