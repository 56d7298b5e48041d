"""The worker's workflow runner (`quartermaster.workflow_runner`): the sandbox with direct
serialization-context lookups must give every payload the same context as the stock sandboxed
runner, keep the sandbox's restrictions on workflow code, and actually be in use with the installed SDK.

A codec that records the serialization context of every payload sequence it sees runs the same
workflow (an activity, a local activity, a memo upsert, a signal) once on the stock runner and once
on Quartermaster's; the two recordings must be identical. The broken variant (a runner whose direct
lookup answers with the workflow's context for everything) is caught by the same comparison.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowFailureError
from temporalio.converter import (
    ActivitySerializationContext,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)
from temporalio.worker import Worker, WorkflowInstance, WorkflowInstanceDetails
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from quartermaster import workflow_runner as runner_module
from quartermaster.workflow_runner import QuartermasterRunner, workflow_runner
from tests.fixtures.runner_probe import RunnerProbe, RunnerProbeForbidden, echo
from worker import PASSTHROUGH


def _describe(context: SerializationContext | None) -> str:
    if isinstance(context, ActivitySerializationContext):
        return f"activity:{context.activity_type}:{context.activity_id}:local={context.is_local}"
    if isinstance(context, WorkflowSerializationContext):
        return f"workflow:{context.workflow_id}"
    return "none"


@dataclasses.dataclass
class RecordingCodec(PayloadCodec, WithSerializationContext):
    """Passes payloads through; records the context each sequence was encoded or decoded under."""

    log: list[str]
    context: SerializationContext | None = None

    def with_context(self, context: SerializationContext) -> RecordingCodec:
        return RecordingCodec(log=self.log, context=context)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        self.log.append(f"encode {len(payloads)} {_describe(self.context)}")
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        self.log.append(f"decode {len(payloads)} {_describe(self.context)}")
        return list(payloads)


@dataclasses.dataclass(frozen=True)
class _WrongContextRunner(QuartermasterRunner):
    """Broken variant: every payload gets the workflow's context, as a careless shortcut would do."""

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        instance = super().create_instance(det)
        workflow_id = det.info.workflow_id
        namespace = det.info.namespace

        def wrong(_command_info: Any) -> SerializationContext:
            return WorkflowSerializationContext(namespace=namespace, workflow_id=workflow_id)

        instance.get_serialization_context = wrong  # type: ignore[method-assign,assignment]
        return instance


async def _recorded(client: Client, runner: SandboxedWorkflowRunner) -> list[str]:
    log: list[str] = []
    converter = dataclasses.replace(client.data_converter, payload_codec=RecordingCodec(log=log))
    recording = Client(**{**client.config(), "data_converter": converter})
    queue = f"runner-probe-{uuid.uuid4().hex[:8]}"
    async with Worker(
        recording, task_queue=queue, workflows=[RunnerProbe], activities=[echo], workflow_runner=runner
    ):
        handle = await recording.start_workflow(
            RunnerProbe.run, "probe", id=f"runner-probe-{queue}", task_queue=queue
        )
        await handle.signal(RunnerProbe.release)
        assert await handle.result() == "PROBE-LOCALAFTER"
    # the workflow id differs per run; compare the shape of the contexts, not the id
    return [line.replace(f"runner-probe-{queue}", "WID") for line in log]


def _stock() -> SandboxedWorkflowRunner:
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH)
    )


def test_the_direct_path_is_in_use_with_the_installed_sdk() -> None:
    """The optimisation is not silently off: the installed temporalio has the parts it relies on."""
    assert runner_module._supported()
    assert workflow_runner(PASSTHROUGH).uses_direct_lookups()
    assert not workflow_runner(PASSTHROUGH, direct_lookups=False).uses_direct_lookups()


async def test_every_payload_gets_the_stock_runners_context(client: Client) -> None:
    stock = await _recorded(client, _stock())
    ours = await _recorded(client, workflow_runner(PASSTHROUGH))
    # the recording covers activity, local activity, memo and workflow payloads, both directions
    kinds = {line.split(" ", 2)[2].split(":", 1)[0] for line in stock}
    assert {"activity", "workflow"} <= kinds, stock
    assert any("local=True" in line for line in stock), stock
    assert any("local=False" in line for line in stock), stock
    assert ours == stock


async def test_the_comparison_catches_a_runner_that_gives_the_wrong_context(client: Client) -> None:
    stock = await _recorded(client, _stock())
    broken = await _recorded(client, _WrongContextRunner(restrictions=_stock().restrictions))
    assert broken != stock


async def test_workflow_code_is_still_restricted(client: Client) -> None:
    """Only the lookups skip the sandbox: a workflow calling datetime.now() still fails its task."""
    queue = f"runner-forbidden-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RunnerProbeForbidden],
        workflow_runner=workflow_runner(PASSTHROUGH),
        workflow_failure_exception_types=[Exception],
    ):
        handle = await client.start_workflow(
            RunnerProbeForbidden.run, id=f"runner-forbidden-{queue}", task_queue=queue,
            execution_timeout=timedelta(seconds=20),
        )  # fmt: skip
        with pytest.raises(WorkflowFailureError) as failed:
            await handle.result()
    assert (
        "RestrictedWorkflowAccessError" in repr(failed.value.cause)
        or "restricted" in str(failed.value.cause).lower()
    ), failed.value.cause
