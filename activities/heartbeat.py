"""Heartbeats for every activity that is given a heartbeat timeout.

An activity waiting on a provider or Stripe heartbeats while it waits, so when the worker dies the
server retries the attempt after the (short) heartbeat timeout instead of the whole start-to-close
timeout. One interceptor instead of a call in each activity: a new activity cannot forget it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

#: a heartbeat at most every this many seconds, and at least three per heartbeat timeout
MAX_INTERVAL_SECONDS = 1.0


class HeartbeatInterceptor(Interceptor):
    """Worker interceptor: activities with a heartbeat timeout heartbeat while they run."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Heartbeating(next)


class _Heartbeating(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        timeout = activity.info().heartbeat_timeout
        if not timeout:
            return await super().execute_activity(input)
        interval = min(MAX_INTERVAL_SECONDS, timeout.total_seconds() / 3)
        beat = asyncio.create_task(_beat(interval))
        try:
            return await super().execute_activity(input)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat


async def _beat(interval: float) -> None:
    # the first beat after `interval`: calls that finish sooner send none (the SDK throttles the rest)
    while True:
        await asyncio.sleep(interval)
        activity.heartbeat()
