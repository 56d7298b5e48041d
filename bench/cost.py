"""What one unattended provisioning costs the engine: history events and Temporal Cloud billable actions,
read from REAL histories, next to the minimum a design of the same steps could need.

    .venv/bin/python -m bench.cost            # (--quick is the same: one provisioning of each kind)

The provisioning is an agent's, through the API (session + identity tokens), as in bench.throughput:
so the session entity (the credential is recorded on it, an update), the principal's spend books (paid:
one reservation and one commit over every layer), the limits and the renewals a paid one starts are
counted as related workflows.

Billable actions follow Temporal Cloud's published list: workflow start, each activity attempt,
timers, search-attribute upserts, signals, accepted updates (update-with-start included), local
activities (one per workflow task), child workflows (two). Queries are billed too but are not in a
history; none is sent here. Memo upserts are not billed. The spend ledger and the principal's limits
are other workflows: their share is the growth of their histories during the provisioning.
"""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import TextIO

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.service import RPCError

from bench.floor import scheduled_activities
from bench.stack import (
    Bench,
    agent_client,
    bench_stack,
    prepare_principals,
    print_machine,
    quiet_stdout,
    table,
)
from bench.throughput import KINDS
from models.books import books_workflow_id
from models.ledger import monthly_ledger_id
from models.limits import limits_workflow_id
from models.renewal import renewal_workflow_id
from models.session import budget_ledger_id

#: the issue's goal: billable actions per provisioning at most this times the minimal design
GOAL = 1.25

#: activities that only read (or get-or-create idempotently): local-activity candidates
READS = frozenset(
    {"load_policy", "authorize_actor", "discover", "resolve_customer", "find_connection", "terms_accepted",
     "lookup_account", "payment_method_status", "resource_ready", "spend_view"}
)  # fmt: skip
AUDIT = frozenset({"record_audit", "record_audit_batch"})
CLASSES = {
    "read": ("read / idempotent get-or-create", "local activity (one action per workflow task)"),
    "audit": ("audit record", "buffered in workflow state, written by one activity"),
    "side effect": ("side effect", "kept: an ordinary activity"),
}


def classify(name: str) -> str:
    return "read" if name in READS else "audit" if name in AUDIT else "side effect"


E = EventType
ACTION_EVENTS = {
    E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "workflow start",
    E.EVENT_TYPE_ACTIVITY_TASK_STARTED: "activity attempts",
    E.EVENT_TYPE_TIMER_STARTED: "timers",
    E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: "search attribute upserts",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: "signals",
    E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "signals",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "updates",
    E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: "child workflows",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW: "continue-as-new",
}
CATEGORIES = ["workflow start", "activity attempts", "local activities", "timers", "search attribute upserts",
              "signals", "updates", "child workflows", "continue-as-new"]  # fmt: skip


def actions(events: list[HistoryEvent]) -> Counter[str]:
    """Billable actions by category, from history events."""
    out: Counter[str] = Counter()
    marker_tasks: set[int] = set()
    for e in events:
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            out["activity attempts"] += max(1, e.activity_task_started_event_attributes.attempt)
        elif e.event_type == E.EVENT_TYPE_MARKER_RECORDED:
            marker = e.marker_recorded_event_attributes
            if marker.marker_name != "core_patch":  # a patch marker is not a local activity
                marker_tasks.add(marker.workflow_task_completed_event_id)
        elif e.event_type == E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            out["child workflows"] += 2
        elif e.event_type in ACTION_EVENTS:
            out[ACTION_EVENTS[e.event_type]] += 1
    out["local activities"] += len(marker_tasks)
    return out


def activity_types(history: WorkflowHistory) -> list[str]:
    """Every activity, local ones included, in order."""
    return scheduled_activities(history)


def minimum(history: WorkflowHistory) -> tuple[int, list[str]]:
    """The fewest actions a design of the same steps needs without losing durability, and how.

    Reads become local activities (one action per workflow task that runs them, and consecutive
    reads share a task); audit events are buffered in workflow state and written by ONE activity at
    the end; search attributes given at start are free, so one upsert (the final state) remains.
    Side effects stay ordinary activities: each must be recorded before the next step depends on it.
    """
    names = activity_types(history)
    side_effects = [n for n in names if n not in READS and n not in AUDIT]
    # a run of consecutive reads (ignoring audits) is one workflow task of local activities
    read_runs, in_run = 0, False
    for n in names:
        if n in AUDIT:
            continue
        if n in READS and not in_run:
            read_runs += 1
        in_run = n in READS
    how = [
        f"{len(side_effects)} side-effect activities kept: {', '.join(side_effects)}",
        f"{sum(n in READS for n in names)} reads as local activities in {read_runs} workflow task(s)",
        f"{sum(n in AUDIT for n in names)} audit activities batched into 1",
        "1 search-attribute upsert (final state + resource), the rest given at start",
    ]
    return 1 + len(side_effects) + read_runs + 1 + 1, how


async def related_events(
    bench: Bench, principal_id: str, provider: str, session_id: str, resource_id: str | None = None
) -> dict[str, list[HistoryEvent]]:
    """Histories of the other workflows a provisioning touches: the principal's spend books (or, with
    `QM_SPEND_BOOKS=0`, the month's ledger and the budget ledger), the limits, the agent's session, and
    the resource's renewals (a paid one starts them)."""
    out: dict[str, list[HistoryEvent]] = {}
    wids = [
        books_workflow_id(principal_id),
        monthly_ledger_id(principal_id, provider, datetime.now(UTC)),
        limits_workflow_id(principal_id),
        f"session-{session_id}",
        budget_ledger_id(session_id),
    ]
    if resource_id:
        wids.append(renewal_workflow_id(provider, resource_id))
    for wid in wids:
        try:
            out[wid] = list((await bench.client.get_workflow_handle(wid).fetch_history()).events)
        except RPCError:
            out[wid] = []
    return out


async def measure(out: TextIO) -> int:
    async with bench_stack() as bench:
        (email,) = await prepare_principals(bench, 1, paid=KINDS["paid"], free=KINDS["free"])
        pid = bench.stack.principal_id(email)
        agent = await agent_client(bench, email)
        bench.agents.append(agent)
        sid = (await agent.auth.whoami()).session_id or ""
        rows: list[list[object]] = []
        detail: list[list[object]] = []
        kinds_of: list[list[object]] = []
        hows: list[list[object]] = []
        for kind, service in KINDS.items():
            provider = service.split("/", 1)[0]
            before = await related_events(bench, pid, provider, sid)
            view = await agent.provisions.create(service_id=service, name=f"cost-{kind}", wait=25)
            view = await agent.provisions.wait(view.request_id, timeout=120)
            assert view.state == "completed", view
            wid = f"provision-{pid}-{view.request_id}"
            history = await bench.client.get_workflow_handle(wid).fetch_history()
            after = await related_events(bench, pid, provider, sid, view.resource_id)
            own = actions(list(history.events))
            others: Counter[str] = Counter()
            other_events = 0
            for other, events in after.items():
                grown = events[len(before.get(other, [])) :]
                other_events += len(grown)
                others += actions(grown)
            mine, theirs = sum(own.values()), sum(others.values())
            low, how = minimum(history)
            low += theirs  # the ledgers' reserve and commit and the session's record stay: controls
            ratio = (mine + theirs) / low
            rows.append(
                [kind, service, len(history.events), other_events, mine, theirs, mine + theirs, low,
                 f"{ratio:.2f}", f"<= {GOAL:.2f}", "yes" if ratio <= GOAL else "no"]
            )  # fmt: skip
            detail += [[kind, cat, own[cat], others[cat]] for cat in CATEGORIES if own[cat] or others[cat]]
            for name, count in Counter(activity_types(history)).items():
                kinds_of.append([kind, name, count, *CLASSES[classify(name)]])
            hows += [[kind, line] for line in how]
        table("history events and billable actions of ONE unattended provisioning (real histories)",
              ["kind", "service", "events", "related events", "actions (provision wf)",
               "actions (related)", "actions total", "minimum", "total/minimum", "goal", "met"],
              rows, out)  # fmt: skip
        print("related = the spend books (or ledgers), the limits, the session, the renewals", file=out)
        table("billable actions by category", ["kind", "category", "provision wf", "related"], detail, out)
        table("activities", ["kind", "activity", "count", "class", "in the minimal design"], kinds_of, out)
        table("the minimal design of the same steps (same durability)", ["kind", "how"], hows, out)
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="accepted for symmetry: the run is already one of each"
    )
    p.parse_args(argv)
    with quiet_stdout() as out:
        print_machine(out)
        return asyncio.run(measure(out))


if __name__ == "__main__":
    raise SystemExit(main())
