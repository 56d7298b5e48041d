"""The engine's floor: a workflow with the same number and sequence of activities as a real
provisioning, each doing nothing. Its plan is read from a real history, so the floor follows the
provisioning workflow as it changes.

Audit activities (`record_audit`) are started without waiting, as `workflows.audit_trail` does, and
awaited at the end; every other activity is awaited before the next, as `ProvisionWorkflow` does. So
the floor's workflow tasks group the same activities as the real history's (`wft_shape` compares them).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Worker

#: activities the real workflow starts without awaiting them at once
BACKGROUND = frozenset({"record_audit"})
FLOOR_WORKFLOW = "BenchFloor"


class FloorStep(BaseModel):
    activity: str
    background: bool = False


class FloorPlan(BaseModel):
    steps: list[FloorStep]


class FloorCall(BaseModel):
    activity: str


#: how many no-op activities ran in this process
NOOP_CALLS = 0
#: workflow id -> [no-ops still expected, set when they ran] (bench.waiting: when a floor is parked)
_EXPECTED: dict[str, tuple[list[int], asyncio.Event]] = {}


def expect_noops(workflow_id: str, count: int) -> asyncio.Event:
    """An event set once `count` no-ops of that workflow have run (call before starting it)."""
    done = asyncio.Event()
    if count <= 0:
        done.set()
    _EXPECTED[workflow_id] = ([count], done)
    return done


def forget(workflow_id: str) -> None:
    _EXPECTED.pop(workflow_id, None)


@activity.defn(name="floor_noop")
async def floor_noop(call: FloorCall) -> None:
    """Does nothing: the cost of an activity to the engine alone."""
    global NOOP_CALLS
    NOOP_CALLS += 1
    expected = _EXPECTED.get(activity.info().workflow_id)
    if expected is not None:
        left, done = expected
        left[0] -= 1
        if left[0] <= 0:
            done.set()


@workflow.defn(name=FLOOR_WORKFLOW)
class FloorWorkflow:
    @workflow.run
    async def run(self, plan: FloorPlan) -> int:
        pending: list[Any] = []
        for step in plan.steps:
            handle = workflow.start_activity(
                floor_noop, FloorCall(activity=step.activity), start_to_close_timeout=timedelta(seconds=30)
            )
            if step.background:
                pending.append(handle)
            else:
                await handle
        for handle in pending:
            await handle
        return len(plan.steps)


PARKED_FLOOR_WORKFLOW = "BenchParkedFloor"


class ParkedPlan(BaseModel):
    """No-op activities before the gate, a wait for one signal, no-op activities after it."""

    before: list[str]
    after: list[str]


@workflow.defn(name=PARKED_FLOOR_WORKFLOW)
class ParkedFloorWorkflow:
    """The floor of a request parked at a human gate: the engine's cost of waiting and waking."""

    def __init__(self) -> None:
        self.go = False

    @workflow.signal(name="go")
    def release(self) -> None:
        self.go = True

    @workflow.run
    async def run(self, plan: ParkedPlan) -> int:
        for name in plan.before:
            await workflow.execute_activity(
                floor_noop, FloorCall(activity=name), start_to_close_timeout=timedelta(seconds=30)
            )
        await workflow.wait_condition(lambda: self.go)
        for name in plan.after:
            await workflow.execute_activity(
                floor_noop, FloorCall(activity=name), start_to_close_timeout=timedelta(seconds=30)
            )
        return len(plan.before) + len(plan.after)


def _local_activity_type(marker: Any) -> str:
    """The activity type a local-activity marker records (core's JSON; not run through the codec)."""
    try:
        data = marker.details["data"].payloads[0].data
        return str(json.loads(data).get("activity_type") or "local_activity")
    except (KeyError, IndexError, ValueError, AttributeError):
        return "local_activity"


def scheduled_activities(history: WorkflowHistory) -> list[str]:
    """Activity types in the order the workflow scheduled them, local activities included: the floor
    runs each as an ordinary no-op activity, so it stays the same whichever way the real one runs it."""
    out = []
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            out.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            marker = e.marker_recorded_event_attributes
            if marker.marker_name == "core_local_activity":
                out.append(_local_activity_type(marker))
    return out


def plan_from_history(history: WorkflowHistory) -> FloorPlan:
    """The floor plan of a real provisioning: its activities, in order."""
    return FloorPlan(
        steps=[
            FloorStep(activity=name, background=name in BACKGROUND) for name in scheduled_activities(history)
        ]
    )


def wft_shape(history: WorkflowHistory) -> list[int]:
    """How many activities each completed workflow task scheduled (zeros left out)."""
    per_task: dict[int, int] = {}
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            wft = e.activity_task_scheduled_event_attributes.workflow_task_completed_event_id
            per_task[wft] = per_task.get(wft, 0) + 1
    return [per_task[k] for k in sorted(per_task)]


def floor_worker(client: Any, task_queue: str, options: dict[str, Any]) -> Worker:
    """A worker for the floor with the same options and sandbox as `worker.build_worker`'s: the same
    `worker_options` (heartbeat interceptor and throttle, sticky timeout) beside the bench's own."""
    from quartermaster.workflow_runner import workflow_runner
    from worker import PASSTHROUGH, worker_options

    return Worker(
        client,
        task_queue=task_queue,
        workflows=[FloorWorkflow, ParkedFloorWorkflow],
        activities=[floor_noop],
        **worker_options(
            **options, workflow_runner=workflow_runner(PASSTHROUGH, shared_code=("workflows", "bench"))
        ),
    )
