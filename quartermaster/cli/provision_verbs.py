"""Verbs for agents and humans: catalog, quote, provision, status, approvals, approve/deny, inbox,
resources, remove, rotate."""

from __future__ import annotations

import argparse
import json
import uuid
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from models.approval import ApprovalDecision
from models.errors import ErrorCode, QuartermasterError, code_of, exit_code
from models.provisioning import ProvisionResult, ResourceActionResult
from models.request import ProvisionRequest
from models.secret import Secret
from quartermaster.cli.output import add_common, emit, report_error, table, usd
from quartermaster.client import QuartermasterClient, Waiting, actor_from_env

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _config(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--config is not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--config must be a JSON object")
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
    p.add_argument("--request-id", help="idempotency key of the whole request (default: random)")
    p.add_argument("--email", help="the principal (default $QM_PRINCIPAL_EMAIL)")
    p.add_argument("--agent", help="the agent's name (default $QM_AGENT)")
    p.add_argument("--wait", type=float, default=60, help="seconds to wait for the result (default 60)")
    p = _parser(sub, "status", "show a request: its result, or what it waits for", status)
    p.add_argument("request_id")
    p.add_argument("--wait", type=float, default=0)
    p = _parser(sub, "approvals", "list approvals waiting for a human", approvals)
    p.add_argument("--email", help="only this principal's")
    for verb in ("approve", "deny"):
        p = _parser(sub, verb, f"{verb} a pending approval with its one-time code", decide)
        p.add_argument("approval_id")
        p.add_argument("--code", required=True, help="the one-time code delivered to you")
        p.set_defaults(decision=verb)
        if verb == "deny":
            p.add_argument("--reason", required=True)
        else:
            p.add_argument("--info", type=_config, help="JSON object of requested information")
    p = _parser(sub, "inbox", "show the principal's dev inbox (codes for approvals)", inbox)
    p.add_argument("--email", required=True)
    p = _parser(sub, "resources", "list provisioned resources and their credentials' names", resources)
    p.add_argument("--email")
    p = _parser(sub, "remove", "remove a resource at its provider (revokes its credentials)", remove)
    p.add_argument("resource_id")
    p.add_argument("--email")
    p.add_argument("--agent")
    p = _parser(sub, "rotate", "mint a new credential for a resource and revoke the old one", rotate)
    p.add_argument("resource_id")
    p.add_argument("--email")
    p.add_argument("--agent")
    p.add_argument("--request-id")


def _revealed(result: ProvisionResult | ResourceActionResult) -> dict[str, Any]:
    """The JSON an agent gets: the credential values revealed (only to the caller that holds the keys)."""
    data = result.model_dump(mode="json")
    if result.credential is not None:
        data["credential"]["env"] = {k: v.reveal() for k, v in result.credential.env.items()}
    return data


async def catalog(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        cats = await qm.catalog(args.provider)
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
        q = await qm.quote(args.service, args.config, args.max_price)
    text = (
        f"{q.service.service_id}: due now {q.due_now or 'nothing (free)'}"
        + (f", then {q.recurring} per {q.interval}" if q.recurring else "")
        + ("" if q.reversible else "; NOT reversible")
        + f"; terms {q.terms_version} ({q.tos_url})"
    )
    emit(args, q, text)
    return 0


def _print_outcome(args: argparse.Namespace, st: Any) -> int:
    if isinstance(st, ProvisionResult):
        if st.outcome == "completed":
            cred = st.credential
            text = (
                f"{st.service_id} {st.resource_id}: {st.resource_status}, account {st.link_action}"
                + (f", charged {st.charge.amount}" if st.charge else "")
                + (
                    f"\ncredential {cred.credential_id} ({', '.join(sorted(cred.env))})"
                    f" expires {cred.expires_at}"
                    "\nuse it with: qm exec " + (st.resource_id or "") + " -- COMMAND"
                    if cred
                    else ""
                )
            )
            emit(args, _revealed(st), text)
            return 0
        code = code_of(st.error_code)
        msg = f"{st.error_message} ({st.outcome}" + (
            f": {', '.join(st.compensations)})" if st.compensations else ")"
        )
        if args.json:
            print(
                json.dumps(
                    {"error": {"code": st.error_code, "message": msg}, "result": st.model_dump(mode="json")}
                )
            )
            return exit_code(code)
        return report_error(args, code, msg)
    if isinstance(st, Waiting):
        a = st.approvals[0]
        if args.json:
            print(
                json.dumps(
                    {
                        "error": {"code": str(st.code), "message": a.summary},
                        "waiting": st.model_dump(mode="json"),
                    }
                )
            )
        else:
            extra = "".join(f"\n  {k}: {v}" for k, v in a.details.items() if k.endswith("url"))
            print(
                f"{st.code}: {a.summary}\n  approval {a.approval_id} (the principal received a code){extra}"
            )
        return 3
    emit(args, st, f"request {st.request_id}: {st.step}")
    return 0


async def provision(args: argparse.Namespace) -> int:
    request_id = args.request_id or uuid.uuid4().hex[:16]
    try:
        req = ProvisionRequest(
            request_id=request_id,
            service_id=args.service,
            name=args.name,
            configuration=args.config,
            max_price=args.max_price,
            budget=args.budget,
            scopes=args.scope,
            credential_ttl_seconds=args.ttl,
            actor=actor_from_env(args.email, args.agent),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, f"{where}: {err['msg']}") from None
    async with QuartermasterClient.from_env() as qm:
        await qm.submit(req)
        st = await qm.wait(request_id, args.wait)
    return _print_outcome(args, st)


async def status(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        st = await qm.wait(args.request_id, args.wait)
    return _print_outcome(args, st)


async def approvals(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        items = await qm.approvals(args.email)
    rows = [
        {"approval": a.approval_id, "kind": a.kind, "summary": a.summary, "expires": a.expires_at}
        for a in items
    ]
    emit(args, items, table(rows, ["approval", "kind", "summary", "expires"]))
    return 0


async def decide(args: argparse.Namespace) -> int:
    decision = ApprovalDecision(
        approval_id=args.approval_id,
        decision=args.decision,
        code=Secret(args.code),
        reason=getattr(args, "reason", None),
        information=getattr(args, "info", None),
    )
    async with QuartermasterClient.from_env() as qm:
        outcome = await qm.decide(decision)
    if outcome.status != "ACCEPTED":
        return report_error(args, ErrorCode.APPROVAL_REJECTED, f"{outcome.status} for {args.approval_id}")
    emit(args, outcome, f"{args.decision}d {args.approval_id}")
    return 0


async def inbox(args: argparse.Namespace) -> int:
    from providers.notifier import read_inbox
    from quartermaster.config import Settings
    from quartermaster.keys import load_keyring

    settings = Settings.from_env()
    pid = load_keyring(settings.resolved_keys_file).principal_id(args.email)
    items = read_inbox(settings.data_dir / "inbox", pid)
    rows = [
        {
            "approval": m.get("approval_id", "-"),
            "kind": m.get("kind", m.get("type")),
            "code": m.get("code", ""),
            "summary": m.get("summary", ""),
        }
        for m in items
    ]
    emit(args, items, table(rows, ["approval", "kind", "code", "summary"]))
    return 0


async def resources(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        items = await qm.resources(args.email)
    rows = [r.model_dump() for r in items]
    emit(args, items, table(rows, ["resource_id", "service_id", "credential_id", "expires_at"]))
    return 0


async def remove(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        res = await qm.remove(args.resource_id, actor_from_env(args.email, args.agent))
    return _action_outcome(args, res, f"removed {args.resource_id}")


async def rotate(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        res = await qm.rotate(
            args.resource_id, actor_from_env(args.email, args.agent), args.request_id or uuid.uuid4().hex[:12]
        )
    cred = res.credential
    return _action_outcome(
        args, res, f"new credential {cred.credential_id} expires {cred.expires_at}" if cred else ""
    )


def _action_outcome(args: argparse.Namespace, res: ResourceActionResult, text: str) -> int:
    if res.outcome != "completed":
        code = code_of(res.error_code)
        return report_error(args, code, res.error_message or "refused")
    emit(args, _revealed(res), text)
    return 0
