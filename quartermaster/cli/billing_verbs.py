"""`qm billing show` and `qm billing set-limit` (a human login): this month's spend per provider and
per agent, and limit changes (the monthly cap, or an agent's monthly limit, per-purchase maximum or
purchases per hour), which apply once the human approves them with the code sent to their channel."""

from __future__ import annotations

import argparse
import re

from models.errors import ErrorCode, QuartermasterError, exit_code
from models.forecast import Forecast
from models.limits import MAX_PURCHASES_PER_HOUR, AgentSpend, LimitKind, SpendSummary
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


def _per_hour(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_PURCHASES_PER_HOUR:
        raise argparse.ArgumentTypeError(f"a whole number of purchases from 1 to {MAX_PURCHASES_PER_HOUR}")
    return int(text)


#: `--kind` on the command line -> the API's limit kind
KINDS: dict[str, LimitKind] = {
    "monthly": "monthly",
    "agent-monthly": "agent_monthly",
    "per-transaction": "per_transaction",
    "velocity": "velocity",
}


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
    p = verbs.add_parser("set-limit", help="ask to approve a new limit (monthly cap or an agent's)")
    add_common(p)
    p.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="monthly",
        help="monthly (the cap per provider, default), agent-monthly, per-transaction, velocity",
    )
    p.add_argument("--usd", type=_usd, help="the new limit in USD (every kind but velocity)")
    p.add_argument("--per-hour", type=_per_hour, help="velocity: purchases per rolling hour")
    p.add_argument("--provider", help="monthly: only this provider (default: the global limit)")
    p.add_argument("--agent", help="agent limits: only this agent (default: every agent)")
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
    text = f"spend in {summary.month} (UTC)\n" + table(rows, columns)
    if summary.agents:
        agents = [_agent_row(a) for a in summary.agents]
        columns = ["agent", "monthly limit", "spent", "reserved", "remaining", "per purchase", "last hour"]
        text += "\nper agent (layers under the cap)\n" + table(agents, columns)
    return text


def _agent_row(a: AgentSpend) -> dict[str, object]:
    def src(value: object, source: str) -> str:
        return "none" if value is None else f"{value} ({source})"

    ledger = a.ledger
    per_hour = a.limits.purchases_per_hour
    return {
        "agent": a.agent,
        "monthly limit": src(a.limits.monthly, a.monthly_source),
        "spent": ledger.committed if ledger else "0.00 USD",
        "reserved": ledger.reserved if ledger else "0.00 USD",
        "remaining": a.remaining if a.remaining is not None else "",
        "per purchase": src(a.limits.per_transaction, a.per_transaction_source),
        "last hour": f"{a.purchases_last_hour}/{per_hour} ({a.velocity_source})"
        if per_hour
        else f"{a.purchases_last_hour} (no limit)",
    }


async def set_limit(args: argparse.Namespace) -> int:
    kind = KINDS[args.kind]
    if (kind == "velocity") != (args.per_hour is not None) or (kind == "velocity") == (args.usd is not None):
        message = "--kind velocity takes --per-hour N; every other kind takes --usd AMOUNT"
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, message)
    if args.provider is not None and kind != "monthly":
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "--provider is for the monthly cap only")
    if args.agent is not None and kind == "monthly":
        raise QuartermasterError(ErrorCode.INVALID_REQUEST, "--agent is for agent limits only")
    async with QuartermasterClient.from_env() as qm:
        pending = await qm.billing.set_limit(
            args.usd, args.provider, kind=kind, agent=args.agent, purchases_per_hour=args.per_hour
        )
    code = ErrorCode.LIMIT_CHANGE_APPROVAL_REQUIRED
    data = {**pending.model_dump(mode="json"), "error": {"code": str(code), "message": pending.message}}
    emit(args, data, f"{code}: approval {pending.approval_id} waits for you\n  {pending.message}")
    return exit_code(code)
