"""A human who never adds a card: the payment-method wait over its whole default 24 h, on the
time-skipping test server, with the real worker, simulators and local Stripe server.

The wait ends on the `payment_method_ready` signal (the Stripe webhook); the poll is only a fallback
and backs off, so the history stays small. Before the backoff the poll ran every 30 s at ~11 events
a poll: some 31,000 events over the wait, with no continue-as-new.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from models.provisioning import ProvisionResult
from quartermaster.codec import EncryptionCodec
from quartermaster.converter import data_converter
from quartermaster.keys import Keyring
from tests.fixtures.stack import Stack, new_email, open_stack
from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES

DAY = 86_400
#: what a bounded wait may cost: the gate's own events plus ~31 polls of ~11 events
MAX_EVENTS = 600
MAX_POLLS = 40


@pytest.fixture
async def skipping_stack(
    keyring: Keyring, tmp_path: Path
) -> AsyncIterator[tuple[WorkflowEnvironment, Stack]]:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter(EncryptionCodec(keyring)),
        test_server_existing_path=str(Path(sys.executable).parent / "temporal-test-server"),
    )
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    k.name: IndexedValueType.ValueType(k.indexed_value_type) for k in SEARCH_ATTRIBUTES
                },
            )
        )
        async with open_stack(env.client, keyring, tmp_path, approval_timeout_seconds=DAY) as stack:
            yield env, stack
    finally:
        await env.shutdown()


async def test_a_24h_payment_method_wait_keeps_the_history_small(
    skipping_stack: tuple[WorkflowEnvironment, Stack],
) -> None:
    (env, stack), email = skipping_stack, new_email()
    req = stack.request("cloud/r2", email)  # USD 5 a month: a card is needed
    handle = await stack.qm.submit(req)
    terms = await stack.wait_for_approval(req.request_id, "terms")
    await stack.decide(terms["approval_id"], email)
    await stack.wait_for_approval(req.request_id, "payment_method")
    typed = stack.client.get_workflow_handle(handle.id, result_type=ProvisionResult)
    await env.sleep(timedelta(seconds=DAY + 600))  # the human never adds a card
    res = await typed.result()
    assert res.error_code == "APPROVAL_TIMED_OUT" and res.outcome in ("rejected", "undone"), res
    history = await handle.fetch_history()
    events = history.events
    polls = [
        e
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "payment_method_status"
    ]
    waited = events[-1].event_time.ToDatetime() - events[0].event_time.ToDatetime()
    print(f"\n24 h payment-method wait: {len(events)} history events, {len(polls)} polls, waited {waited}")
    assert waited.total_seconds() >= DAY
    assert len(polls) <= MAX_POLLS, len(polls)
    assert len(events) <= MAX_EVENTS, len(events)
    # the result is clean: no task failed on the way
    assert not [e for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED]
