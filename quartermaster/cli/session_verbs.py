"""Verbs for agent identity: `qm run`, `qm session open|delegate|show|list|revoke`, `qm agent
freeze|unfreeze|show`. Exit codes: 0 ok, 2 bad input, 3 waiting for a human, 1 refused/failed."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from models.errors import ErrorCode, QuartermasterError, exit_code
from models.secret import Secret
from models.session import DelegationRequest
from quartermaster.cli.output import add_common, emit, report_error, usd
from quartermaster.config import Settings
from quartermaster.identity.session_client import (
    ENV_SESSION,
    SessionClient,
    identity_token_from_env,
    session_id_of,
)
from quartermaster.identity.settings import IdentitySettings
from quartermaster.keys import load_keyring
from quartermaster.temporal import connect

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

_DURATION = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> int:
    """`90`, `90s`, `15m`, `1h`, `2d` -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError("a duration like 90s, 15m, 1h or 2d")
    return int(m[1]) * _UNITS[m[2]]


@asynccontextmanager
async def session_client() -> AsyncIterator[tuple[SessionClient, IdentitySettings]]:
    settings = Settings.from_env()
    keyring = load_keyring(settings.resolved_keys_file, create=False)
    temporal = await connect(settings, keyring)
    yield (
        SessionClient(temporal=temporal, keyring=keyring, task_queue=settings.task_queue),
        IdentitySettings.from_env(settings.data_dir),
    )


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
    p.add_argument("--ttl", type=duration, default=None, help="e.g. 1h (root default 1h)")
    p.add_argument("--max-depth", type=int, default=None)
    p.add_argument("--scope", action="append", default=None, help="credential scope (repeatable)")


def register(sub: Sub) -> None:
    p = _verb(sub, "run", "attest a command and run it with its agent identity", run)
    p.add_argument("--agent", required=True)
    p.add_argument("--session", metavar="ID", help="inject this session's token (must be bound to --agent)")
    p.add_argument("--session-from-env", action="store_true", help=f"pass ${ENV_SESSION} on to the child")
    p.add_argument("--email", help="the principal, passed to the child as QM_PRINCIPAL_EMAIL")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND")

    session = sub.add_parser("session", help="open, delegate, show, list and revoke sessions")
    ss = session.add_subparsers(dest="session_verb", required=True, metavar="VERB")
    p = _verb(ss, "open", "ask the principal to open a session for an agent (approval)", session_open)
    p.add_argument("--email", required=True)
    p.add_argument("--agent", required=True)
    _grant_flags(p, required=True)
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for the approval")
    p = _verb(
        ss, "delegate", "create a narrower session for another agent (run by an agent)", session_delegate
    )
    p.add_argument("--to", required=True, dest="to_agent")
    _grant_flags(p, required=False)
    p.add_argument("--reveal-token", action="store_true", help="print the child's session token")
    p = _verb(ss, "show", "show a session", session_show)
    p.add_argument("session_id")
    p = _verb(ss, "list", "list sessions", session_list)
    p.add_argument("--email")
    p.add_argument("--agent")
    p.add_argument("--all", action="store_true", help="closed sessions too")
    p = _verb(ss, "revoke", "revoke a session, its descendants and their credentials", session_revoke)
    p.add_argument("session_id")
    p.add_argument("--email", help="who revokes (recorded)")
    p.add_argument("--reason", default="revoked by the principal")

    agent = sub.add_parser("agent", help="the kill switch: freeze / unfreeze an agent")
    sa = agent.add_subparsers(dest="agent_verb", required=True, metavar="VERB")
    p = _verb(sa, "freeze", "revoke everything an agent holds and block it", agent_freeze)
    p.add_argument("name")
    p.add_argument("--email", required=True, help="the principal pulling the switch (recorded)")
    p.add_argument("--reason", default="kill switch")
    p = _verb(sa, "unfreeze", "ask the principal to approve unblocking an agent", agent_unfreeze)
    p.add_argument("name")
    p.add_argument("--email", required=True)
    p.add_argument("--reason", default="unfreeze")
    p = _verb(sa, "show", "show whether an agent is frozen", agent_show)
    p.add_argument("name")
    p.add_argument("--email", required=True, help="the principal whose agent it is")


async def _fetch_session_token(args: argparse.Namespace) -> tuple[Secret | None, str | None]:
    if args.session_from_env:
        value = os.environ.get(ENV_SESSION)
        if not value:
            raise QuartermasterError(
                ErrorCode.SESSION_INVALID, f"--session-from-env but ${ENV_SESSION} is empty"
            )
        token = Secret(value)
        return token, session_id_of(token)
    if not args.session:
        return None, None
    async with session_client() as (qm, _):
        state = await qm.show(args.session)
        if state.agent != args.agent:
            raise QuartermasterError(ErrorCode.SESSION_INVALID, "the session is bound to another agent")
        fetched = await qm.token(args.session)
    if fetched is None:
        code = ErrorCode.SESSION_REVOKED if state.status == "revoked" else ErrorCode.SESSION_INVALID
        raise QuartermasterError(code, f"the session is {state.status}")
    return fetched, args.session


def run(args: argparse.Namespace) -> int:
    from quartermaster.identity.attestation import Attestor, MeasurementError
    from quartermaster.identity.launcher import run_attested
    from quartermaster.identity.verification import ReplayGuard

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        return report_error(args, ErrorCode.INVALID_REQUEST, "nothing to run: qm run --agent NAME -- COMMAND")
    settings = Settings.from_env()
    ids = IdentitySettings.from_env(settings.data_dir)
    try:
        session, session_id = asyncio.run(_fetch_session_token(args))
        attestor = Attestor.from_settings(ids, create=True)
        record = run_attested(
            command,
            agent=args.agent,
            attestor=attestor,
            replay=ReplayGuard(ids.replay_db),
            session=session,
            session_id=session_id,
            principal_email=args.email,
        )
    except MeasurementError as err:
        return report_error(args, ErrorCode.INVALID_REQUEST, str(err))
    except ValueError as err:
        return report_error(args, ErrorCode.INVALID_REQUEST, str(err))
    return record.exit_code if record.exit_code is not None else 1


async def session_open(args: argparse.Namespace) -> int:
    async with session_client() as (qm, ids):
        state = await qm.open(
            email=args.email,
            agent=args.agent,
            allowed_services=args.allow,
            budget_minor=args.budget.amount,
            currency=args.budget.currency,
            ttl_seconds=args.ttl or 3600,
            max_depth=args.max_depth or 0,
            allowed_scopes=args.scope,
            approval_timeout_seconds=Settings.from_env().approval_timeout_seconds,
            trust_domain=ids.trust_domain,
        )
        deadline = time.monotonic() + args.wait
        while state.status == "pending_approval" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)  # polling a human decision, not synchronising code
            state = await qm.show(state.session_id)
    if state.status == "pending_approval":
        data = {
            "session_id": state.session_id,
            "status": state.status,
            "approval_id": state.approval_id,
            "error": {
                "code": str(ErrorCode.SESSION_APPROVAL_REQUIRED),
                "message": "waiting for the principal",
            },
        }
        emit(
            args,
            data,
            f"session {state.session_id} waits for the principal's approval {state.approval_id}\n"
            f"  the principal runs: qm approve {state.approval_id} --code <code from their inbox>",
        )
        return exit_code(ErrorCode.SESSION_APPROVAL_REQUIRED)
    if state.status != "active":
        return report_error(args, ErrorCode.APPROVAL_DENIED, f"session {state.session_id} is {state.status}")
    emit(args, state, f"session {state.session_id} active until {state.grant.expires_at.isoformat()}")
    return 0


async def session_delegate(args: argparse.Namespace) -> int:
    session = os.environ.get(ENV_SESSION)
    identity = identity_token_from_env()
    if not session or identity is None:
        return report_error(
            args, ErrorCode.SESSION_INVALID, "no session: run this inside `qm run --agent NAME --session ID`"
        )
    req = DelegationRequest(
        session_token=Secret(session),
        identity_token=identity,
        to_agent=args.to_agent,
        allowed_services=args.allow,
        budget=args.budget,
        ttl_seconds=args.ttl,
        max_depth=args.max_depth,
        allowed_scopes=args.scope,
    )
    async with session_client() as (qm, _):
        result = await qm.delegate(req)
    data: dict[str, Any] = result.model_dump(mode="json", exclude={"session_token"})
    if args.reveal_token:
        data["session_token"] = result.session_token.reveal()
    emit(
        args,
        data,
        f"session {result.session_id} for {args.to_agent} (depth {result.depth}); start it with\n"
        f"  qm run --agent {args.to_agent} --session {result.session_id} -- COMMAND",
    )
    return 0


async def session_show(args: argparse.Namespace) -> int:
    async with session_client() as (qm, _):
        state = await qm.show(args.session_id)
    g = state.grant
    emit(
        args,
        state,
        f"session {state.session_id}: {state.status}\n  agent chain: {' > '.join(state.chain)}\n"
        f"  services: {', '.join(g.allowed_services)}\n"
        f"  budget: {g.budget}  expires: {g.expires_at.isoformat()}\n"
        f"  depth {state.depth}/{g.max_depth}  children: {len(state.children)}"
        f"  credentials: {len(state.credentials)}",
    )
    return 0


async def session_list(args: argparse.Namespace) -> int:
    async with session_client() as (qm, _):
        ids = await qm.list(email=args.email, agent=args.agent, running=not args.all)
        states = [await qm.show(i) for i in ids]
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
    from quartermaster.cli.output import table

    emit(args, states, table(rows, ["session", "agent", "status", "depth", "expires"]))
    return 0


async def session_revoke(args: argparse.Namespace) -> int:
    async with session_client() as (qm, _):
        by = qm.keyring.principal_id(args.email) if args.email else None
        summary = await qm.revoke(args.session_id, by=by, reason=args.reason)
    emit(
        args,
        summary,
        f"session {summary.session_id} {summary.status}: "
        f"{summary.descendants_closed} descendant session(s) closed, "
        f"{summary.credentials_revoked} credential(s) revoked, {summary.credential_failures} failure(s)",
    )
    return 0


async def agent_freeze(args: argparse.Namespace) -> int:
    async with session_client() as (qm, _):
        result = await qm.freeze(args.name, email=args.email, reason=args.reason)
    emit(args, result, f"agent {result.agent} frozen; {len(result.sessions_revoked)} session(s) revoked")
    return 0


async def agent_unfreeze(args: argparse.Namespace) -> int:
    async with session_client() as (qm, _):
        status = await qm.unfreeze(args.name, email=args.email, reason=args.reason)
    data = {
        **status.model_dump(mode="json"),
        "error": {"code": str(ErrorCode.UNFREEZE_APPROVAL_REQUIRED), "message": "waiting for the principal"},
    }
    emit(
        args,
        data,
        f"agent {status.agent} stays frozen until the principal approves {status.unfreeze_approval_id}",
    )
    return exit_code(ErrorCode.UNFREEZE_APPROVAL_REQUIRED)


async def agent_show(args: argparse.Namespace) -> int:
    async with session_client() as (qm, _):
        status = await qm.agent_status(args.name, email=args.email)
    emit(args, status, f"agent {status.agent}: {'FROZEN' if status.frozen else 'active'}")
    return 0
