"""What an operator sees in the Temporal UI, read from the real dev server the way the UI reads it: the
run's user metadata (static summary and details, from describe()), the current details (the SDK's
`__temporal_workflow_metadata` query), the memo and `QmState`. A denied request reads as REJECTED
with its code, not only as a green "completed" run; a waiting one says what it waits for."""

from __future__ import annotations

import asyncio

from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.worker import Replayer

from models.provisioning import ProvisionResult
from tests.fixtures.stack import Stack, new_email
from worker import workflow_classes
from workflows.search_attributes import QM_STATE


async def current_details(handle: WorkflowHandle[object, object]) -> str:
    meta: WorkflowMetadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return str(meta.current_details)


async def details_until(handle: WorkflowHandle[object, object], prefix: str, timeout: float = 20) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        text = await current_details(handle)
        if text.startswith(prefix) or asyncio.get_running_loop().time() > deadline:
            return text
        await asyncio.sleep(0.1)


async def test_a_denied_request_reads_as_rejected_in_the_ui(stack: Stack) -> None:
    email = new_email()
    req = stack.request("cloud/workers", email)
    handle = await stack.qm.submit(req)
    approval = await stack.wait_for_approval(req.request_id, "terms")
    waiting = await details_until(handle, "waiting for terms approval")
    assert waiting.startswith("waiting for terms approval by the principal"), waiting
    await stack.decide(approval["approval_id"], email, "deny", reason="not this provider")
    res = await stack.client.get_workflow_handle(handle.id, result_type=ProvisionResult).result()
    assert (res.outcome, res.error_code) == ("rejected", "APPROVAL_DENIED")

    desc = await handle.describe()
    summary, details = await desc.static_summary(), await desc.static_details()
    assert summary == f"provision cloud/workers '{req.name}' for agent {req.actor.agent}", summary
    assert details is not None and req.request_id in details and "REJECTED" in details, details
    assert email not in (summary or "") + details  # user metadata is no place for an email
    text = await current_details(handle)
    assert text.startswith("REJECTED: APPROVAL_DENIED: terms denied: not this provider"), text
    assert "nothing had moved" in text
    assert (await desc.memo())["outcome"] == "rejected"
    assert (await desc.memo())["error_code"] == "APPROVAL_DENIED"
    assert desc.typed_search_attributes.get(QM_STATE) == "FAILED"
    # the history (with its new markers) replays on the current code
    replayer = Replayer(workflows=list(workflow_classes()), data_converter=stack.client.data_converter)
    await replayer.replay_workflow(await handle.fetch_history())


async def test_a_completed_request_names_its_resource(stack: Stack) -> None:
    email = new_email()
    req = stack.request("cloud/workers", email)
    handle = await stack.qm.submit(req)
    approval = await stack.wait_for_approval(req.request_id, "terms")
    await stack.decide(approval["approval_id"], email)
    res = await stack.client.get_workflow_handle(handle.id, result_type=ProvisionResult).result()
    assert res.outcome == "completed" and res.resource_id
    assert await current_details(handle) == f"COMPLETED: cloud/workers {res.resource_id}"
    assert (await (await handle.describe()).memo())["outcome"] == "completed"
