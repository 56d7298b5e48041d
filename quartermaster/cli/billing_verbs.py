"""`qm billing show` and `qm billing set-limit` (a human login): this month's spend per provider, and
limit changes, which apply once the human approves them with the code sent to their channel."""

from __future__ import annotations

import argparse
import re

from models.errors import ErrorCode, exit_code
from models.forecast import Forecast
from models.limits import SpendSummary
from models.money import Money
from quartermaster.cli.output import add_common, emit, table, usd
from quartermaster.client import QuartermasterClient

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def _usd(text: str) -> Money:
    """A limit: a USD amount above zero."""
    amount = usd(text)
    if amount.amount == 0:
        raise argparse.ArgumentTypeError("a limit above 0 USD")
    return amount


def _month(text: str) -> str:
    if not _MONTH.match(text):
        raise argparse.ArgumentTypeError("a month as YYYY-MM, e.g. 2026-12")
    return text


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    billing = sub.add_parser("billing", help="spend this month and spending limits")
    verbs = billing.add_subparsers(dest="billing_verb", required=True, metavar="VERB")
    p = verbs.add_parser("show", help="limit, committed, reserved and remaining per provider this month")
    add_common(p)
    p.add_argument("--month", type=_month, help="YYYY-MM (default: the current UTC month)")
    p.add_argument(
        "--months",
        type=int,
        default=12,
        choices=range(1, 25),
        metavar="N",
        help="forecast of committed renewals for N months from now (1..24, default 12)",
    )
    p.set_defaults(handler=show)
    p = verbs.add_parser("set-limit", help="ask to approve a new monthly limit")
    add_common(p)
    p.add_argument("--usd", type=_usd, required=True, help="the new monthly limit in USD")
    p.add_argument("--provider", help="only this provider (default: the global limit)")
    p.set_defaults(handler=set_limit)


async def show(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        summary = await qm.billing.show(args.month)
        forecast = await qm.billing.forecast(args.months)
    data = {**summary.model_dump(mode="json"), "forecast": forecast.model_dump(mode="json")}
    emit(args, data, _render(summary) + "\n" + _render_forecast(forecast))
    return 0


def _render_forecast(forecast: Forecast) -> str:
    rows = [
        {
            "month": r.month,
            "provider": r.provider,
            "in ledger": r.in_ledger,
            "renewals": r.renewals,
            "total": r.total,
            "limit": r.limit,
            "over": "OVER" if r.over_limit else "",
        }
        for r in forecast.rows
    ]
    if not rows:
        return "no committed future charges"
    columns = ["month", "provider", "in ledger", "renewals", "total", "limit", "over"]
    return "committed future charges (scheduled renewals)\n" + table(rows, columns)


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
    async with QuartermasterClient.from_env() as qm:
        pending = await qm.billing.set_limit(args.usd, args.provider)
    code = ErrorCode.LIMIT_CHANGE_APPROVAL_REQUIRED
    data = {**pending.model_dump(mode="json"), "error": {"code": str(code), "message": pending.message}}
    emit(args, data, f"{code}: approval {pending.approval_id} waits for you\n  {pending.message}")
    return exit_code(code)
