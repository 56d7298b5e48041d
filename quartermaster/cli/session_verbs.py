"""Verbs for agent identity, all through the API: `qm run`, `qm session open|delegate|show|list|revoke`,
`qm agent freeze|unfreeze|show`. A human opens, revokes, freezes; an agent (under `qm run`) delegates."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

from models.errors import ErrorCode, exit_code
from models.session import MAX_SESSION_TTL_SECONDS, SessionState
from quartermaster.cli.output import add_common, emit, report_error, table, usd
from quartermaster.client import ApiError, QuartermasterClient

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

_DURATION = re.compile(r"^(\d{1,7})([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_AGENT = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def duration(text: str) -> int:
    """`90`, `90s`, `15m`, `1h`, `2d` -> seconds, at most a session's longest life (7 days)."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError("a duration like 90s, 15m, 1h or 2d")
    seconds = int(m[1]) * _UNITS[m[2]]
    if not 60 <= seconds <= MAX_SESSION_TTL_SECONDS:
        raise argparse.ArgumentTypeError("a duration from 1m to 7d")
    return seconds


def agent_name(text: str) -> str:
    if not _AGENT.match(text):
        raise argparse.ArgumentTypeError("agent names are lower-case letters, digits, '.', '_' and '-'")
    return text


def _verb(sub: Sub, name: str, help_: str, handler: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_)
    add_common(p)
    p.set_defaults(handler=handler)
    return p


def _grant_flags(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--allow", action="append", required=required, metavar="P/S", help="service pattern (repeatable)"
    )
    p.add_argument("--budget", type=usd, required=required, help="USD")
    p.add_argument("--ttl", type=duration, default=None, help="e.g. 1h (default 1h for a root session)")
    p.add_argument("--max-depth", type=int, default=None, help="how many delegation levels below it")
    p.add_argument("--scope", action="append", default=None, help="credential scope (repeatable)")


def register(sub: Sub) -> None:
    p = _verb(sub, "run", "run a command as an agent: the API attests it and binds it to a session", run)
    p.add_argument("--agent", required=True, type=agent_name)
    p.add_argument("--session", metavar="ID", required=True, help="the session it runs under")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND")

    session = sub.add_parser("session", help="open, delegate, show, list and revoke sessions")
    ss = session.add_subparsers(dest="session_verb", required=True, metavar="VERB")
    p = _verb(
        ss, "open", "open a session for an agent (you approve it with the code you receive)", session_open
    )
    p.add_argument("--agent", required=True, type=agent_name)
    _grant_flags(p, required=True)
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for the approval")
    p = _verb(
        ss, "delegate", "create a narrower session for another agent (run by an agent)", session_delegate
    )
    p.add_argument("--to", required=True, dest="to_agent", type=agent_name)
    _grant_flags(p, required=False)
    p = _verb(ss, "show", "show a session", session_show)
    p.add_argument("session_id")
    p = _verb(ss, "list", "list sessions", session_list)
    p.add_argument("--all", action="store_true", help="closed sessions too")
    p = _verb(ss, "revoke", "revoke a session, its descendants and their credentials", session_revoke)
    p.add_argument("session_id")
    p.add_argument("--reason", default="revoked by the principal")

    agent = sub.add_parser("agent", help="the kill switch: freeze / unfreeze an agent")
    sa = agent.add_subparsers(dest="agent_verb", required=True, metavar="VERB")
    p = _verb(sa, "freeze", "revoke everything an agent holds and block it", agent_freeze)
    p.add_argument("name", type=agent_name)
    p.add_argument("--reason", default="kill switch")
    p = _verb(
        sa, "unfreeze", "ask to unblock an agent (you approve it with the code you receive)", agent_unfreeze
    )
    p.add_argument("name", type=agent_name)
    p.add_argument("--reason", default="unfreeze")
    p = _verb(sa, "show", "show whether an agent is frozen", agent_show)
    p.add_argument("name", type=agent_name)


def run(args: argparse.Namespace) -> int:
    """Synchronous on purpose: the child runs outside any event loop, so Ctrl-C cannot cancel the wait."""
    from quartermaster.client.launcher import Issued, run_launched
    from quartermaster.identity.attestation import Measurement, MeasurementError

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        return report_error(
            args, ErrorCode.INVALID_REQUEST, "nothing to run: qm run --agent NAME --session ID -- COMMAND"
        )
    qm = QuartermasterClient.from_env()

    def issue(measurement: Measurement) -> tuple[Issued, str | None]:
        async def call() -> Any:
            async with QuartermasterClient.from_env() as c:
                return await c.identities.attest(
                    agent=args.agent, measurement=measurement.model_dump(mode="json"), session_id=args.session
                )

        got = asyncio.run(call())
        return Issued(
            token=got.identity_token, jti=got.identity_jti, expires_at=got.identity_expires_at
        ), got.session_token

    def retire(issued: list[Issued]) -> None:
        async def call() -> None:
            async with QuartermasterClient.from_env() as c:
                await c.identities.retire([i.jti for i in issued])

        try:
            asyncio.run(call())
        except ApiError:
            pass  # the tokens expire by themselves within minutes

    try:
        record = run_launched(
            command,
            agent=args.agent,
            issue=issue,
            retire=retire,
            api_url=qm.base_url,
            session_id=args.session,
        )
    except MeasurementError as err:
        return report_error(args, ErrorCode.INVALID_REQUEST, str(err))
    return record.exit_code if record.exit_code is not None else 1


def _session_text(state: SessionState) -> str:
    g = state.grant
    return (
        f"session {state.session_id}: {state.status}\n  agent chain: {' > '.join(state.chain)}\n"
        f"  services: {', '.join(g.allowed_services)}\n"
        f"  budget: {g.budget}  expires: {g.expires_at.isoformat()}\n"
        f"  depth {state.depth}/{g.max_depth}  children: {len(state.children)}"
        f"  credentials: {len(state.credentials)}"
    )


async def session_open(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        state = await qm.sessions.open(
            agent=args.agent,
            allowed_services=args.allow,
            budget=args.budget,
            ttl_seconds=args.ttl or 3600,
            max_depth=args.max_depth or 0,
            allowed_scopes=args.scope,
        )
        deadline = time.monotonic() + args.wait
        while state.status == "pending_approval" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # polling a human decision, not synchronising code
            state = await qm.sessions.get(state.session_id)
    if state.status == "pending_approval":
        code = ErrorCode.SESSION_APPROVAL_REQUIRED
        data = {
            "session_id": state.session_id,
            "status": state.status,
            "approval_id": state.approval_id,
            "error": {"code": str(code), "message": "waiting for your approval"},
        }
        emit(
            args,
            data,
            f"session {state.session_id} waits for your approval {state.approval_id}\n"
            f"  approve it: qm approve {state.approval_id} --code <code from your inbox>\n"
            f"  then run the agent: qm run --agent {args.agent} --session {state.session_id} -- COMMAND",
        )
        return exit_code(code)
    if state.status != "active":
        return report_error(args, ErrorCode.APPROVAL_DENIED, f"session {state.session_id} is {state.status}")
    emit(args, state, _session_text(state))
    return 0


async def session_delegate(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        if qm.role != "agent":
            return report_error(
                args,
                ErrorCode.SESSION_INVALID,
                "delegate from inside an agent: qm run --agent NAME --session ID -- ...",
            )
        state = await qm.sessions.delegate(
            to_agent=args.to_agent,
            allowed_services=args.allow,
            budget=args.budget,
            ttl_seconds=args.ttl,
            max_depth=args.max_depth,
            allowed_scopes=args.scope,
        )
    emit(
        args,
        state,
        f"session {state.session_id} for {args.to_agent} (depth {state.depth}); start it with\n"
        f"  qm run --agent {args.to_agent} --session {state.session_id} -- COMMAND",
    )
    return 0


async def session_show(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        state = await qm.sessions.get(args.session_id)
    emit(args, state, _session_text(state))
    return 0


async def session_list(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        states = await qm.sessions.list(all=args.all)
    rows = [
        {
            "session": s.session_id,
            "agent": s.agent,
            "status": s.status,
            "depth": s.depth,
            "expires": s.grant.expires_at,
        }
        for s in states
    ]
    emit(args, states, table(rows, ["session", "agent", "status", "depth", "expires"]))
    return 0


async def session_revoke(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        summary = await qm.sessions.revoke(args.session_id, reason=args.reason)
    emit(
        args,
        summary,
        f"session {summary.session_id} {summary.status}: "
        f"{summary.descendants_closed} descendant session(s) closed, "
        f"{summary.credentials_revoked} credential(s) revoked, {summary.credential_failures} failure(s)",
    )
    return 0


async def agent_freeze(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        result = await qm.agents.freeze(args.name, reason=args.reason)
    emit(args, result, f"agent {result.agent} frozen; {len(result.sessions_revoked)} session(s) revoked")
    return 0


async def agent_unfreeze(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        status = await qm.agents.unfreeze(args.name, reason=args.reason)
    code = ErrorCode.UNFREEZE_APPROVAL_REQUIRED
    data = {
        **status.model_dump(mode="json"),
        "error": {"code": str(code), "message": "waiting for your approval"},
    }
    emit(
        args,
        data,
        f"agent {status.agent} stays frozen until you approve {status.unfreeze_approval_id}\n"
        f"  qm approve {status.unfreeze_approval_id} --code <code from your inbox>",
    )
    return exit_code(code)


async def agent_show(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        status = await qm.agents.show(args.name)
    emit(args, status, f"agent {status.agent}: {'FROZEN' if status.frozen else 'active'}")
    return 0
