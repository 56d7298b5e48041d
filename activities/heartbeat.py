"""Heartbeats for every activity that is given a heartbeat timeout.

An activity waiting on a provider or Stripe heartbeats while it waits, so when the worker dies the
server retries the attempt after the (short) heartbeat timeout instead of the whole start-to-close
timeout. One interceptor instead of a call in each activity: a new activity cannot forget it.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

#: a heartbeat at most every this many seconds, and at least three per heartbeat timeout
MAX_INTERVAL_SECONDS = 1.0
#: the worker's heartbeat throttle (`build_worker`): the beats reach the server as often as they are
#: made. The SDK's default is 0.8 of the heartbeat timeout, 2.4 s of a 3 s one, which left 0.6 s for
#: the call to reach a loaded server; a bench run at C=50 lost reservations to spurious timeouts
HEARTBEAT_THROTTLE = timedelta(seconds=MAX_INTERVAL_SECONDS)


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
        except asyncio.CancelledError:
            # the SDK's traceback does not say why: a timeout, the workflow's cancel, a shutdown
            activity.logger.warning("activity cancelled: %s", activity.cancellation_details())
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat


async def _beat(interval: float) -> None:
    # the first beat after `interval`: calls that finish sooner send none (the SDK throttles the rest)
    while True:
        await asyncio.sleep(interval)
        activity.heartbeat()
