"""`qm link PROVIDER`: link your existing account at a provider without buying anything (human login).

The API asks the provider whether your attested email has an account; if so, you consent at the
provider (the link is on your channel: `qm approvals`, or the notification's page), and the account
is linked. A later `qm provision` there reuses it: no terms, no new account."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from models.errors import ErrorCode, code_of, exit_code
from models.link import LinkView
from quartermaster.cli.output import add_common, emit, error_object, report_error
from quartermaster.client import QuartermasterClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("link", help="link your existing account at a provider (OAuth; nothing is bought)")
    add_common(p)
    p.add_argument("provider")
    p.add_argument("--wait", type=float, default=5, help="seconds to wait for the result (default 5)")
    p.set_defaults(handler=link)


async def link(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        view = await qm.links.start(args.provider)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, args.wait)
        while view.state in ("running", "waiting_for_human") and loop.time() < deadline:
            await asyncio.sleep(0.5)
            view = await qm.links.get(args.provider)
            if view.state == "waiting_for_human" and not sys.stderr.isatty():
                break  # an agent or a script: answer now (exit 3), follow it with `qm link` again
    return print_link(args, view)


def print_link(args: argparse.Namespace, view: LinkView) -> int:
    if view.state == "completed":
        text = f"{view.provider}: your existing account is linked ({view.link_action})" + (
            ", as before" if view.already_linked else ""
        )
        emit(args, view, text)
        return 0
    if view.state == "rejected":
        err = view.error or {}
        code = code_of(err.get("code"))
        if args.json:
            print(
                json.dumps({"error": error_object(code, err.get("message", "")), "link": view.model_dump()})
            )
            return exit_code(code) if exit_code(code) != 0 else 4
        return report_error(args, code, err.get("message", "nothing was linked"))
    code = ErrorCode.OAUTH_CONSENT_REQUIRED
    message = (
        f"consent at {view.provider} to link your account: open the link in your notification, or"
        f" qm approvals (approval {view.approval_id or 'being prepared'}); then run qm link {view.provider}"
    )
    if args.json:
        print(json.dumps({"error": error_object(code, message), "link": view.model_dump()}))
    else:
        print(f"{code}: {message}", file=sys.stderr)
    return exit_code(code)
