"""`qm upgrade RES --to SERVICE` and `qm downgrade RES --to SERVICE`: a plan change within the
catalog's `allowed_updates`, its proration printed before anything moves. An upgrade waits for the
human's approval (exit 3 with the approval id); run the same command with `--request-id` again, after
approving, for the result."""

from __future__ import annotations

import argparse

from models.errors import ErrorCode, code_of, exit_code
from models.plan_change import PlanChangeQuote
from quartermaster.cli.output import add_common, emit, report_error
from quartermaster.client import QuartermasterClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, what in (("upgrade", "a dearer"), ("downgrade", "a cheaper")):
        p = sub.add_parser(verb, help=f"move a resource to {what} plan of its catalog's allowed updates")
        add_common(p)
        p.add_argument("resource_id")
        p.add_argument("--to", required=True, metavar="PROVIDER/SERVICE", help="the new service")
        p.add_argument("--quote", action="store_true", help="only print the proration; change nothing")
        p.add_argument("--request-id", help="your idempotency key for the change (default: random)")
        p.add_argument("--wait", type=float, default=20, help="seconds to wait for the result (0..60)")
        p.set_defaults(handler=change, direction=verb)


def _proration(q: PlanChangeQuote) -> str:
    now = f"{q.due_now} due now" if q.due_now.amount else f"{q.next_renewal_credit} off the next renewal"
    return (
        f"{q.from_service_id} -> {q.to_service_id} ({q.direction}): {now} "
        f"(the rest of this period: {q.charge} new minus {q.credit} unused, until {q.period_end:%Y-%m-%d}); "
        f"then {q.new_price} per {q.interval}"
    )


async def change(args: argparse.Namespace) -> int:
    async with QuartermasterClient.from_env() as qm:
        if args.quote:
            quote = await qm.resources.plan_quote(args.resource_id, args.to)
            emit(args, quote, _proration(quote))
            return 0
        view = await qm.resources.change_plan(
            args.resource_id,
            args.to,
            direction=args.direction,
            request_id=args.request_id,
            wait_seconds=max(0.0, min(args.wait, 60.0)),
        )
    text = _proration(view.quote) if view.quote else ""
    if view.state == "completed":
        emit(args, view, f"{args.resource_id}: now {args.to}\n{text}")
        return 0
    if view.state == "awaiting_approval":
        code = ErrorCode.PURCHASE_APPROVAL_REQUIRED
        data = {
            **view.model_dump(mode="json"),
            "error": {"code": str(code), "message": "approve the upgrade"},
        }
        emit(
            args,
            data,
            f"{code}: approval {view.approval_id} waits for you\n{text}\n"
            f"then: qm {args.direction} {args.resource_id} --to {args.to} --request-id {view.request_id}",
        )
        return exit_code(code)
    if view.state == "running":
        emit(args, view, f"still running: qm {args.direction} ... --request-id {view.request_id}\n{text}")
        return 3
    result = view.result
    code = code_of(result.error_code if result else None)
    return report_error(args, code, (result.error_message if result else None) or "refused")
