"""Canary secrets through a real workflow: nothing stored or logged holds them, unless the codec is off.

The workflow gets a token as input, an activity issues another as its result, an activity fails
with the token in its error message (only failure encryption keeps that out of history), a
compensation runs, and a second run fails the workflow itself. Then `tests.leak_scan` reads the raw
history bytes, search attributes, memo, ids, the captured logs (Python and the Rust core's output)
and the exception reprs the client sees.
"""

from __future__ import annotations

import io
import logging
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.converter import DataConverter
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from models.secret import Secret
from quartermaster.codec import EncryptionCodec
from quartermaster.converter import data_converter
from quartermaster.keys import Keyring
from quartermaster.logging_setup import configure_logging
from tests.leak_scan import find_canaries, scan_for_canaries
from workflows.search_attributes import QM_RESOURCE


class ProbeInput(BaseModel):
    resource_id: str
    token: Secret
    fail_workflow: bool = False


class ProbeResult(BaseModel):
    resource_id: str
    issued: Secret
    compensated: bool = False


class RevokeInput(BaseModel):
    resource_id: str
    issued: Secret


@dataclass
class ProbeActivities:
    """Activities holding the token a 'provider' issues; `revoked` records compensation."""

    issued_token: str
    revoked: list[str] = field(default_factory=list)

    @activity.defn
    async def issue(self, inp: ProbeInput) -> ProbeResult:
        return ProbeResult(resource_id=inp.resource_id, issued=Secret(self.issued_token))

    @activity.defn
    async def configure(self, inp: ProbeInput) -> None:
        # the mistake the codec must survive: a provider error quoting the token verbatim
        raise ApplicationError(f"provider rejected credential {inp.token.reveal()}", type="ProviderRejected")

    @activity.defn
    async def revoke(self, inp: RevokeInput) -> None:
        self.revoked.append(inp.issued.reveal())


# unsandboxed: the sandbox would re-import this test module (pytest and all); the codec is under test here
@workflow.defn(sandboxed=False)
class CanaryProbe:
    @workflow.run
    async def run(self, inp: ProbeInput) -> ProbeResult:
        timeout = timedelta(seconds=10)
        result: ProbeResult = await workflow.execute_activity_method(
            ProbeActivities.issue, inp, start_to_close_timeout=timeout
        )
        try:
            await workflow.execute_activity_method(
                ProbeActivities.configure,
                inp,
                start_to_close_timeout=timeout,
                retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(milliseconds=10)),
            )
        except ActivityError:
            await workflow.execute_activity_method(
                ProbeActivities.revoke,
                RevokeInput(resource_id=inp.resource_id, issued=result.issued),
                start_to_close_timeout=timeout,
            )
            result.compensated = True
        if inp.fail_workflow:
            # a Secret in an f-string renders as ***, so this message is safe even when decoded
            raise ApplicationError(
                f"provisioning failed; credential {inp.token} was revoked", type="ProbeFailed"
            )
        return result


@dataclass
class Run:
    workflow_ids: list[str]
    canaries: list[str]
    blobs: dict[str, bytes]
    revoked: list[str]
    result: ProbeResult


async def _run_scenario(env: WorkflowEnvironment, converter: DataConverter, capfd) -> Run:
    input_token = "cnry" + secrets.token_hex(12)  # no recognisable shape
    issued_token = "cnry" + secrets.token_hex(12)
    client = Client(env.client.service_client, namespace=env.client.namespace, data_converter=converter)
    acts = ProbeActivities(issued_token=issued_token)
    task_queue = f"canary-{uuid.uuid4().hex[:8]}"
    resource = f"res_{uuid.uuid4().hex[:10]}"
    ids = [f"canary-ok-{uuid.uuid4().hex[:8]}", f"canary-fail-{uuid.uuid4().hex[:8]}"]
    log_buffer = io.StringIO()
    handler = configure_logging(logging.INFO, stream=log_buffer)
    capfd.readouterr()  # start the fd capture clean
    reprs: list[str] = []
    try:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[CanaryProbe],
            activities=[acts.issue, acts.configure, acts.revoke],
        ):
            search_attributes = TypedSearchAttributes([SearchAttributePair(QM_RESOURCE, resource)])
            result = await client.execute_workflow(
                CanaryProbe.run,
                ProbeInput(resource_id=resource, token=Secret(input_token)),
                id=ids[0],
                task_queue=task_queue,
                memo={"resource": resource},
                search_attributes=search_attributes,
            )
            with pytest.raises(WorkflowFailureError) as failed:
                await client.execute_workflow(
                    CanaryProbe.run,
                    ProbeInput(resource_id=resource, token=Secret(input_token), fail_workflow=True),
                    id=ids[1],
                    task_queue=task_queue,
                    memo={"resource": resource},
                    search_attributes=search_attributes,
                )
            err: BaseException | None = failed.value
            while err is not None:
                reprs += [repr(err), str(err)]
                err = err.__cause__
    finally:
        logging.getLogger().removeHandler(handler)
    out, errout = capfd.readouterr()
    blobs = {
        "python-logs": log_buffer.getvalue().encode(),
        "stdout": out.encode(),
        "stderr": errout.encode(),
        "client-exception-reprs": "\n".join(reprs).encode(),
        "result-repr": repr(result).encode(),
    }
    return Run(ids, [input_token, issued_token], blobs, acts.revoked, result)


async def test_real_converter_leaks_no_canary(temporal_env: WorkflowEnvironment, capfd) -> None:
    run = await _run_scenario(temporal_env, data_converter(EncryptionCodec(Keyring.generate())), capfd)
    # the scenario really happened: the issued token came back, the compensation got it
    assert run.result.issued.reveal() == run.canaries[1]
    assert run.result.compensated
    assert run.revoked == [run.canaries[1], run.canaries[1]]
    # and the activity failure (whose message holds the token) really went through the logs
    assert "Completing activity as failed" in run.blobs["python-logs"].decode()
    findings = await find_canaries(temporal_env.client, run.workflow_ids, run.canaries, run.blobs)
    assert findings == [], "\n".join(f"{f.canary[:8]}… in {f.source} as {f.form}" for f in findings)
    counts = await scan_for_canaries(temporal_env.client, run.workflow_ids, run.canaries, run.blobs)
    assert counts == dict.fromkeys(run.canaries, 0)
    # memo values are payloads too: encrypted (memo keys and search attributes are not)
    desc = await temporal_env.client.get_workflow_handle(run.workflow_ids[0]).describe()
    memo = desc.raw_description.workflow_execution_info.memo.fields["resource"]
    assert memo.metadata["encoding"] == b"binary/encrypted"


async def test_scan_finds_canaries_when_the_codec_is_off(temporal_env: WorkflowEnvironment, capfd) -> None:
    run = await _run_scenario(temporal_env, data_converter(None), capfd)
    findings = await find_canaries(temporal_env.client, run.workflow_ids, run.canaries, run.blobs)
    input_token, issued_token = run.canaries
    # the failing activity's message is found inside the ActivityTaskFailed events themselves
    history = await temporal_env.client.get_workflow_handle(run.workflow_ids[0]).fetch_history()
    failed_events = {
        f"/event/{e.event_id}"
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    }
    assert failed_events
    hit_sources = {f.source for f in findings if f.canary == input_token and f.form == "text"}
    assert all(any(s.endswith(ev) for s in hit_sources) for ev in failed_events), hit_sources
    counts = await scan_for_canaries(temporal_env.client, run.workflow_ids, run.canaries)
    assert counts[input_token] > 0
    assert counts[issued_token] > 0
