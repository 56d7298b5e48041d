"""Heartbeats reach the server about once a second, read from the server's own record of them.

A provider or Stripe call has a 3 s heartbeat timeout. With the SDK's default throttle (0.8 of the
timeout) the server saw a beat every 2.4 s, leaving 0.6 s for a loaded server to take the call, and
a bench run at C=50 lost reservations to heartbeat timeouts that no dead worker caused.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import datetime, timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from worker import worker_options

#: the SDK's own default for `max_heartbeat_throttle_interval`: the throttle is then 0.8 of the timeout
SDK_DEFAULT_THROTTLE = timedelta(seconds=60)


@activity.defn(name="heartbeat_probe_wait")
async def wait(seconds: float) -> None:
    await asyncio.sleep(seconds)


@workflow.defn(name="HeartbeatProbe", sandboxed=False)
class HeartbeatProbe:
    @workflow.run
    async def run(self, seconds: float) -> None:
        await workflow.execute_activity(
            wait,
            seconds,
            start_to_close_timeout=timedelta(seconds=30),
            heartbeat_timeout=timedelta(seconds=3),  # what the provider and Stripe calls use
        )


async def _heartbeats_the_server_saw(client: Client, **overrides: Any) -> list[datetime]:
    queue = f"heartbeats-{uuid.uuid4().hex}"
    options = worker_options(**overrides)
    options.pop("workflow_runner")  # the probe is not sandboxed
    async with Worker(client, task_queue=queue, workflows=[HeartbeatProbe], activities=[wait], **options):
        handle = await client.start_workflow(HeartbeatProbe.run, 7.0, id=queue, task_queue=queue)
        seen: list[datetime] = []
        result = asyncio.ensure_future(handle.result())
        while not result.done():
            for pending in (await handle.describe()).raw_description.pending_activities:
                if pending.HasField("last_heartbeat_time"):
                    at = pending.last_heartbeat_time.ToDatetime()
                    if not seen or at != seen[-1]:
                        seen.append(at)
            await asyncio.sleep(0.1)
        await result
    return seen


def _widest_gap(seen: list[datetime]) -> float:
    return max((b - a).total_seconds() for a, b in itertools.pairwise(seen))


async def test_heartbeats_reach_the_server_every_second(client: Client) -> None:
    seen = await _heartbeats_the_server_saw(client)
    assert len(seen) >= 5, seen  # a beat a second over a 7 s call, the first after one second
    print("heartbeats the server saw, widest gap:", _widest_gap(seen))
    assert _widest_gap(seen) < 2.0, seen


async def test_the_check_catches_the_sdk_default_throttle(client: Client) -> None:
    seen = await _heartbeats_the_server_saw(client, max_heartbeat_throttle_interval=SDK_DEFAULT_THROTTLE)
    print("with the SDK default throttle, widest gap:", _widest_gap(seen))
    assert _widest_gap(seen) > 2.2, seen
