"""The human's list of pending approvals at N rows, through the API process, in minutes instead of the
45 of parking N real requests (`bench.waiting`, whose figure is the one the goal is judged on).

    .venv/bin/python -m bench.approvals_list             # N=10,000
    .venv/bin/python -m bench.approvals_list --quick     # N=300

N rows are written into the store's read model the way the gates' `notify_approval` writes them
(`PendingApprovalStore.open_approval`, sealed), for one human; then that human's client lists every page
(`GET /v1/approvals`, what `qm approvals` runs) `--repeat` times, and single pages of 1 and of the
largest size are timed. What a page costs beyond its rows is the per-call overhead (authentication,
one store transaction, HTTP).
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import TextIO

from bench.stack import bench_stack, human_client, run_script, table
from models.approval import APPROVALS_PAGE_MAX, ApprovalRequest
from tests.fixtures.stack import new_email

GOAL_S = 1.0


def row(n: int, principal_id: str, at: datetime) -> ApprovalRequest:
    """A terms approval as a parked provisioning opens it (the same kind, summary and detail keys)."""
    wid = f"provision-{principal_id}-bench{n:06d}"
    return ApprovalRequest(
        approval_id=f"{wid}.terms",
        kind="terms",
        workflow_id=wid,
        principal_id=principal_id,
        summary="accept cloud's terms of service version 2026-01",
        details={"tos_url": "http://127.0.0.1:9/cloud/tos", "terms_version": "2026-01", "provider": "cloud"},
        requested_at=at + timedelta(milliseconds=n),
        expires_at=at + timedelta(hours=6),
    )


async def measure(args: argparse.Namespace, out: TextIO) -> int:
    async with bench_stack() as bench:
        email = new_email()
        human = await human_client(bench, email)
        pid = bench.stack.principal_id(email)
        now = datetime.now(UTC)
        for n in range(args.n):
            await bench.stack.store.approvals.open_approval(row(n, pid, now))
        lists: list[float] = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            listed = await human.approvals.list()
            lists.append(time.perf_counter() - t)
            assert len(listed) == args.n, len(listed)

        async def page(limit: int) -> tuple[float, int]:
            samples, got = [], 0
            for _ in range(20):
                t = time.perf_counter()
                items, _ = await human.approvals.page(limit=limit)
                samples.append(time.perf_counter() - t)
                got = len(items)
            return statistics.median(samples), got

        (one, _), (full, size) = await page(1), await page(APPROVALS_PAGE_MAX)
        await human.aclose()
        per_row_us = (full - one) / max(size - 1, 1) * 1e6
        best = min(lists)
        rows = [
            [f"GET /v1/approvals, every page of {args.n} (pages of {APPROVALS_PAGE_MAX})",
             ", ".join(f"{s:.2f}" for s in lists) + " s", f"median {statistics.median(lists):.2f} s"],
            ["one page of 1, median of 20", f"{one * 1000:.1f} ms", "the per-call overhead"],
            [f"one page of {size} (limit {APPROVALS_PAGE_MAX}), median of 20", f"{full * 1000:.1f} ms",
             f"{per_row_us:.0f} us a row beyond the first"],
        ]  # fmt: skip
        table(f"the pending-approvals list at N={args.n}", ["what", "value", "note"], rows, out)
        median = statistics.median(lists)
        met = "yes" if median <= GOAL_S else "no"
        goal = [[f"list at {args.n} (median, s)", f"{median:.2f}", f"<= {GOAL_S}", met]]
        table("against the goal (same run)", ["figure", "value", "goal", "met"], goal, out)
        print(f"fastest list: {best:.2f} s", file=out)
        return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.approvals_list", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="pending approvals of one human (default 10,000)")
    p.add_argument("--repeat", type=int, default=5, help="full lists timed (default 5)")
    p.add_argument("--quick", action="store_true", help="N=300, 2 lists")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.repeat = 300, 2
    return args


def main(argv: list[str] | None = None) -> int:
    return run_script(measure, parse(argv))


if __name__ == "__main__":
    raise SystemExit(main())
