"""`qm login`, `qm logout`, `qm whoami`, `qm serve`.

`qm login --email E` asks the API to send a one-time code to E's channel (under `qm dev`, the dev
inbox: `qm inbox --email E`), then `qm login --email E --code CODE` (or typing it at the prompt)
stores a short-lived login token in the user's config directory, mode 0600."""

from __future__ import annotations

import argparse
import sys

from models.errors import ErrorCode, QuartermasterError
from quartermaster.cli.output import add_common, emit
from quartermaster.client import QuartermasterClient
from quartermaster.client.config import forget_login, save_login


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("login", help="log in as a human (a one-time code to your channel)")
    add_common(p)
    p.add_argument("--email", required=True)
    p.add_argument("--code", help="the code you received (without it: send one, then prompt on a terminal)")
    p.add_argument("--login-id", help="the login the code belongs to (default: the one just started)")
    p.set_defaults(handler=login)
    p = sub.add_parser("logout", help="forget and revoke your login token")
    add_common(p)
    p.set_defaults(handler=logout)
    p = sub.add_parser("whoami", help="who the API takes you for")
    add_common(p)
    p.set_defaults(handler=whoami)
    p = sub.add_parser("serve", help="run the Quartermaster API (server side: needs the keys and Temporal)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8700)
    p.set_defaults(handler=serve)


_PENDING = "pending-login.json"


async def login(args: argparse.Namespace) -> int:
    import json

    from quartermaster.client.env import config_dir

    pending_file = config_dir() / _PENDING
    async with QuartermasterClient.from_env() as qm:
        login_id = args.login_id
        if args.code is None or login_id is None:
            if args.code is None:
                started = await qm.auth.login(args.email)
                login_id = started.login_id
                config_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
                pending_file.write_text(json.dumps({"email": args.email, "login_id": login_id}))
                if not sys.stdin.isatty() or args.json:
                    emit(
                        args,
                        started,
                        f"a login code was sent to {args.email}'s channel; then run:\n"
                        f"  qm login --email {args.email} --code CODE",
                    )
                    return 0
                code = input("login code: ").strip()  # noqa: ASYNC250 - the only thing left to do
            else:
                code = args.code
                try:
                    saved = json.loads(pending_file.read_text())
                except (OSError, ValueError):
                    raise QuartermasterError(
                        ErrorCode.LOGIN_INVALID, "no login started: run qm login --email E"
                    ) from None
                if saved.get("email") != args.email:
                    raise QuartermasterError(
                        ErrorCode.LOGIN_INVALID, f"the login started was for {saved.get('email')}"
                    )
                login_id = str(saved["login_id"])
        else:
            code = args.code
        token = await qm.auth.verify(login_id, code)
        path = save_login(
            api_url=qm.base_url, email=token.email, token=token.token, expires_at=token.expires_at
        )
    pending_file.unlink(missing_ok=True)
    emit(
        args,
        {
            "email": token.email,
            "principal_id": token.principal_id,
            "expires_at": token.expires_at,
            "saved_to": str(path),
        },
        f"logged in as {token.email} until {token.expires_at.isoformat()} (token saved to {path}, mode 0600)",
    )
    return 0


async def logout(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        if qm.role == "human":
            try:
                await qm.auth.logout()
            except QuartermasterError:
                pass  # already expired or revoked: forgetting it is all that is left
    forget_login()
    emit(args, {"logged_out": True}, "logged out")
    return 0


async def whoami(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        me = await qm.auth.whoami()
        url = qm.base_url
    if me.kind == "anonymous":
        text = f"not logged in (API {url}): qm login --email YOU@example.com"
    elif me.kind == "human":
        text = f"{me.email} (human, {me.principal_id}) at {url}"
    else:
        text = f"agent {me.agent} for {me.email}, session {me.session_id}, chain {' > '.join(me.agent_chain)}"
    emit(args, me, text)
    return 0


def serve(args: argparse.Namespace) -> int:
    from quartermaster.api.app import create_app, preflight
    from quartermaster.api.serving import serve

    preflight()
    serve(create_app(), host=args.host, port=args.port)
    return 0
