"""`qm doctor` (alias `qm init --preflight`): every blocker at once, and `qm llm-context [PROVIDER]`:
the text a provider publishes for agents about its services."""

from __future__ import annotations

import argparse
from typing import Any

import httpx

from models.errors import ErrorCode, QuartermasterError
from quartermaster.cli.output import add_common, emit
from quartermaster.client import QuartermasterClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="check everything a request needs and list every blocker at once")
    add_common(p)
    p.set_defaults(handler=doctor)
    p = sub.add_parser("init", help="`qm init --preflight`: the same checks as `qm doctor`")
    add_common(p)
    p.add_argument("--preflight", action="store_true", required=True)
    p.set_defaults(handler=doctor)
    p = sub.add_parser("llm-context", help="what providers tell agents about their services")
    add_common(p)
    p.add_argument("provider", nargs="?")
    p.set_defaults(handler=llm_context)


async def doctor(args: argparse.Namespace) -> int:
    """Exit 0 when nothing blocks, 3 when a human must act first, 1 when the API cannot be reached."""
    checks: list[dict[str, Any]] = []
    blocked = False
    async with QuartermasterClient.from_env() as qm:
        try:
            me = await qm.auth.whoami()
            checks.append({"check": "api", "ok": True, "detail": qm.base_url})
        except QuartermasterError as err:
            checks.append({"check": "api", "ok": False, "code": str(err.code), "detail": err.message})
            emit(args, {"checks": checks}, _render(checks))
            return 1
        if me.kind == "anonymous":
            blocked = True
            hint = "no login and no session: qm login --email YOU, or run under qm run"
            checks.append(
                {"check": "login", "ok": False, "code": str(ErrorCode.UNAUTHENTICATED), "detail": hint}
            )
        elif me.kind == "agent":
            checks.append(
                {"check": "session", "ok": True, "detail": f"agent {me.agent}, session {me.session_id}"}
            )
        else:
            checks.append({"check": "login", "ok": True, "detail": str(me.email)})
            pending = await qm.approvals.list()
            for a in pending:
                blocked = True
                checks.append({"check": f"approval {a.kind}", "ok": False, "code": "APPROVAL_PENDING",
                               "detail": f"{a.approval_id}: {a.summary}"})  # fmt: skip
            billing = await qm.billing.show()
            for prov in billing.providers:
                full = prov.ledger.remaining.amount <= 0
                blocked |= full
                left = f"{prov.ledger.remaining} of {prov.ledger.limit} left this month"
                check = {"check": f"cap {prov.provider}", "ok": not full, "detail": left}
                if full:
                    check["code"] = str(ErrorCode.SPEND_LIMIT_REACHED)
                checks.append(check)
    emit(args, {"checks": checks, "blocked": blocked}, _render(checks))
    return 3 if blocked else 0


def _render(checks: list[dict[str, Any]]) -> str:
    lines = []
    for c in checks:
        code = f"{c['code']} " if not c["ok"] and c.get("code") else ""
        lines.append(f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {code}{c['detail']}")
    return "\n".join(lines)


async def llm_context(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        catalogs = await qm.catalog.list(args.provider)
    out = []
    async with httpx.AsyncClient(timeout=10) as http:
        for cat in catalogs:
            for service in cat.services:
                text = ""
                if service.llm_context.startswith(("http://", "https://")):
                    try:
                        r = await http.get(service.llm_context)
                        text = r.text[:20_000] if r.status_code == 200 else ""
                    except httpx.HTTPError:
                        text = ""
                out.append({"service_id": service.service_id, "url": service.llm_context, "text": text})
    emit(args, out, "\n\n".join(f"# {o['service_id']} ({o['url']})\n{o['text']}".rstrip() for o in out))
    return 0
