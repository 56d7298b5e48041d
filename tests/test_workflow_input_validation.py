"""Workflows started with invalid input (by any client of the namespace, skipping every pre-check) end
at once with INVALID_REQUEST instead of failing their workflow task forever; and they are started with
an execution timeout that fits their longest wait."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle

from models.provisioning import ProvisionResult, ResourceActionResult
from quartermaster.orchestration.requests import provision_execution_timeout
from tests.fixtures.stack import Stack, new_email
from tests.test_provision_e2e import result_of


def _provision(**changes: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "request_id": f"bad-{uuid.uuid4().hex[:10]}",
        "service_id": "cloud/workers",
        "name": "ok-name",
        "actor": {"principal_email": new_email(), "agent": "planner"},
    }
    for key, value in changes.items():
        if key == "email":
            req["actor"]["principal_email"] = value
        else:
            req[key] = value
    return req


PROVISION_CASES = {
    "negative-amount": _provision(max_price={"amount": -5, "currency": "usd"}),
    "fractional-amount": _provision(max_price={"amount": 1.5, "currency": "usd"}),
    "string-amount": _provision(budget={"amount": "100", "currency": "usd"}),
    "unknown-currency": _provision(max_price={"amount": 100, "currency": "xyz"}),
    "10k-char-name": _provision(name="a" * 10_000),
    "extra-field": _provision(evil="1"),
    "bad-email": _provision(email="not-an-email"),
    "not-an-object": "provision everything",  # type: ignore[dict-item]
}
ACTOR = {"principal_email": "alice@example.com", "agent": "planner"}
ACTION_CASES = {
    "RemoveResourceWorkflow": [
        {"resource_id": "r" * 10_000, "service_id": "cloud/workers", "actor": ACTOR},
        {"resource_id": "res_1", "service_id": "cloud/workers", "actor": ACTOR, "extra": 1},
        {"resource_id": "res_1", "service_id": "cloud/workers", "actor": {**ACTOR, "principal_email": "x"}},
    ],
    "RotateCredentialWorkflow": [
        {"resource_id": "res_1", "service_id": "cloud/workers", "request_id": "r1", "actor": ACTOR,
         "ttl_seconds": 1.5},
        {"resource_id": "res_1", "service_id": "cloud/workers", "request_id": "x" * 10_000, "actor": ACTOR},
    ],
}  # fmt: skip


async def _no_task_failures(handle: WorkflowHandle[Any, Any]) -> None:
    history = await handle.fetch_history()
    assert not [e for e in history.events if e.HasField("workflow_task_failed_event_attributes")]


@pytest.mark.parametrize("case", list(PROVISION_CASES))
async def test_invalid_provision_input_ends_with_invalid_request(stack: Stack, case: str) -> None:
    raw = PROVISION_CASES[case]
    wid = f"provision-bad-{uuid.uuid4().hex[:10]}"
    handle = await stack.client.start_workflow(
        "ProvisionWorkflow", raw, id=wid, task_queue=stack.settings.task_queue, result_type=ProvisionResult
    )
    res = await asyncio.wait_for(handle.result(), 15)
    assert (res.outcome, res.error_code) == ("rejected", "INVALID_REQUEST"), res
    assert res.error_message and len(res.error_message) < 400 and "aaaaaaaaaa" not in res.error_message
    await _no_task_failures(handle)


@pytest.mark.parametrize(
    ("workflow", "index"), [(w, i) for w, cases in ACTION_CASES.items() for i in range(len(cases))]
)
async def test_invalid_remove_and_rotate_input_ends_with_invalid_request(
    stack: Stack, workflow: str, index: int
) -> None:
    handle = await stack.client.start_workflow(
        workflow,
        ACTION_CASES[workflow][index],
        id=f"bad-{workflow}-{uuid.uuid4().hex[:10]}",
        task_queue=stack.settings.task_queue,
        result_type=ResourceActionResult,
    )
    res = await asyncio.wait_for(handle.result(), 15)
    assert (res.outcome, res.error_code) == ("rejected", "INVALID_REQUEST"), res
    await _no_task_failures(handle)


async def test_started_workflows_have_an_execution_timeout_fitting_their_longest_wait(stack: Stack) -> None:
    email = new_email()
    req = stack.request("cloud/workers", email)
    handle = await stack.qm.submit(req)
    desc = await handle.describe()
    timeout = desc.raw_description.execution_config.workflow_execution_timeout.ToTimedelta()
    expected = provision_execution_timeout(stack.settings.approval_timeout_seconds)
    assert timeout == expected
    # longer than every gate timing out in turn (terms, payment method, purchase, spend, 3 x information)
    assert timeout > 7 * timedelta(seconds=stack.settings.approval_timeout_seconds)
    await stack.decide((await stack.wait_for_approval(req.request_id, "terms"))["approval_id"], email)
    assert (await result_of(stack, req.request_id)).outcome == "completed"
