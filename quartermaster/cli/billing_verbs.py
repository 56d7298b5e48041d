"""`qm billing show` and `qm billing set-limit`: this month's spend per provider, and limit changes.

A limit change is a human action: `set-limit` only starts a `LimitChangeWorkflow`, which sends a
one-time code to the principal's channel; `qm approve <approval id> --code <code>` applies it.
"""

from __future__ import annotations

import argparse
import os
import uuid

from models.errors import ErrorCode, QuartermasterError, exit_code
from models.limits import LimitChangeRequest, SpendSummary, SpendSummaryRequest
from models.money import Money
from quartermaster.cli.output import add_common, emit, table, usd


def _usd(text: str) -> Money:
    """A limit: a USD amount above zero."""
    amount = usd(text)
    if amount.amount == 0:
        raise argparse.ArgumentTypeError("a limit above 0 USD")
    return amount


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    billing = sub.add_parser("billing", help="spend this month and spending limits")
    verbs = billing.add_subparsers(dest="billing_verb", required=True, metavar="VERB")
    p = verbs.add_parser("show", help="limit, committed, reserved and remaining per provider this month")
    add_common(p)
    p.add_argument("--email", help="the principal (default $QM_PRINCIPAL_EMAIL)")
    p.add_argument("--month", help="YYYY-MM (default: the current UTC month)")
    p.set_defaults(handler=show)
    p = verbs.add_parser("set-limit", help="ask the principal to approve a new monthly limit")
    add_common(p)
    p.add_argument("--usd", type=_usd, required=True, help="the new monthly limit in USD")
    p.add_argument("--provider", help="only this provider (default: the global limit)")
    p.add_argument("--email", help="the principal (default $QM_PRINCIPAL_EMAIL)")
    p.set_defaults(handler=set_limit)


def _email(args: argparse.Namespace) -> str:
    email = args.email or os.environ.get("QM_PRINCIPAL_EMAIL", "")
    if "@" not in email:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "give --email or set QM_PRINCIPAL_EMAIL")
    return str(email)


async def show(args: argparse.Namespace) -> int:
    """Print this month's spend per provider."""
    from activities.spend import SpendActivities
    from quartermaster.config import Settings
    from quartermaster.keys import load_keyring
    from quartermaster.temporal import connect

    settings = Settings.from_env()
    keyring = load_keyring(settings.resolved_keys_file, create=settings.dev)
    principal_id = keyring.principal_id(_email(args))
    client = await connect(settings, keyring)
    spend = SpendActivities(client, settings.task_queue, providers=list(settings.providers))
    try:
        summary = await spend.spend_view(SpendSummaryRequest(principal_id=principal_id, month=args.month))
    except ValueError as err:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "--month is YYYY-MM") from err
    emit(args, summary, _render(summary))
    return 0


def _render(summary: SpendSummary) -> str:
    rows = [
        {
            "provider": p.provider,
            "limit": f"{p.ledger.limit} ({p.limit_source})",
            "committed": p.ledger.committed,
            "reserved": p.ledger.reserved,
            "remaining": p.ledger.remaining,
            "alerts": ",".join(f"{t}%" for t in p.ledger.alerts_sent),
        }
        for p in summary.providers
    ]
    columns = ["provider", "limit", "committed", "reserved", "remaining", "alerts"]
    return f"spend in {summary.month} (UTC)\n" + table(rows, columns)


async def set_limit(args: argparse.Namespace) -> int:
    """Start the approval for a new limit; exits 3 until the principal approves it with the code."""
    from quartermaster.config import Settings
    from quartermaster.keys import load_keyring
    from quartermaster.temporal import connect

    settings = Settings.from_env()
    keyring = load_keyring(settings.resolved_keys_file, create=settings.dev)
    email = _email(args)
    principal_id = keyring.principal_id(email)
    try:
        req = LimitChangeRequest(
            principal_id=principal_id,
            principal_email=email,
            provider=args.provider,
            limit=args.usd,
            approval_timeout_seconds=settings.approval_timeout_seconds,
        )
    except ValueError as err:
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "invalid provider name or email") from err
    client = await connect(settings, keyring)
    workflow_id = f"limit-change-{principal_id}-{uuid.uuid4().hex[:12]}"
    await client.start_workflow(
        "LimitChange",
        req,
        id=workflow_id,
        task_queue=settings.task_queue,
        static_summary=f"limit change to {args.usd} ({args.provider or 'global'})",
    )
    approval_id = f"{workflow_id}.limit_change"
    code = ErrorCode.LIMIT_CHANGE_APPROVAL_REQUIRED
    message = "a one-time code was sent to the principal; approve with qm approve APPROVAL_ID --code CODE"
    data = {
        "status": "approval_required",
        "approval_id": approval_id,
        "workflow_id": workflow_id,
        "limit": args.usd,
        "provider": args.provider,
        "error": {"code": str(code), "message": message},
    }
    emit(args, data, f"{code}: approval {approval_id} waits for the principal\n  {message}")
    return exit_code(code)
