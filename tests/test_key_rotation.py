"""Key rotation on the real dev server: history written under the old key still decodes and replays."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import timedelta

import pytest
from pydantic import BaseModel
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from models.secret import Secret
from quartermaster.cli.secrets_verbs import rotate_key_file
from quartermaster.codec import KEY_ID_METADATA, EncryptionCodec
from quartermaster.converter import data_converter
from quartermaster.keys import Keyring, load_keyring, write_key_file
from tests.leak_scan import iter_payloads


class GrantInput(BaseModel):
    resource_id: str
    token: Secret


class Approval(BaseModel):
    approver_note: Secret


class GrantResult(BaseModel):
    resource_id: str
    token: Secret
    echoed: Secret
    note: Secret


@activity.defn
async def reissue_token(inp: GrantInput) -> GrantResult:
    return GrantResult(
        resource_id=inp.resource_id,
        token=Secret(inp.token.reveal() + "-v2"),
        echoed=inp.token,
        note=Secret("unset"),
    )


# unsandboxed: the sandbox would re-import this test module (pytest and all); the codec is under test here
@workflow.defn(sandboxed=False)
class RotationProbe:
    """Starts under one key, waits for a signal that arrives after the rotation, then finishes."""

    def __init__(self) -> None:
        self._approval: Approval | None = None

    @workflow.run
    async def run(self, inp: GrantInput) -> GrantResult:
        await workflow.wait_condition(lambda: self._approval is not None)
        assert self._approval is not None
        result = await workflow.execute_activity(
            reissue_token, inp, start_to_close_timeout=timedelta(seconds=10)
        )
        return result.model_copy(update={"note": self._approval.approver_note})

    @workflow.signal
    def approve(self, approval: Approval) -> None:
        self._approval = approval


def _client(env: WorkflowEnvironment, keyring: Keyring) -> Client:
    return Client(
        env.client.service_client,
        namespace=env.client.namespace,
        data_converter=data_converter(EncryptionCodec(keyring)),
    )


async def _key_ids(handle: WorkflowHandle[RotationProbe, GrantResult]) -> set[bytes]:
    history = await handle.fetch_history()
    return {p.metadata[KEY_ID_METADATA] for e in history.events for p in iter_payloads(e)}


async def _wait_for_first_task(handle: WorkflowHandle[RotationProbe, GrantResult]) -> None:
    for _ in range(100):
        history = await handle.fetch_history()
        if any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED for e in history.events):
            return
        await asyncio.sleep(0.05)  # polling the history, not waiting blindly
    raise AssertionError("the workflow never ran its first task")


async def test_history_from_old_key_decodes_and_replays_after_rotation(
    temporal_env: WorkflowEnvironment, tmp_path
) -> None:
    key_file = tmp_path / "keys.json"
    write_key_file(key_file, Keyring.generate())
    write_key_file(tmp_path / "codec-keys.json", load_keyring(key_file).codec_only())
    old = load_keyring(key_file)
    token, note = "tok" + secrets.token_hex(12), "note" + secrets.token_hex(8)
    task_queue = f"rotation-{uuid.uuid4().hex[:8]}"
    workflow_id = f"rotation-probe-{uuid.uuid4().hex[:8]}"

    old_client = _client(temporal_env, old)
    async with Worker(
        old_client, task_queue=task_queue, workflows=[RotationProbe], activities=[reissue_token]
    ):
        handle = await old_client.start_workflow(
            RotationProbe.run,
            GrantInput(resource_id="res_rot_1", token=Secret(token)),
            id=workflow_id,
            task_queue=task_queue,
        )
        await _wait_for_first_task(handle)
    assert await _key_ids(handle) == {b"p1"}

    # the operator's procedure: `qm keys rotate` on the key file, then restart every key holder
    assert rotate_key_file(key_file) == {"payload": "p2", "seal": "s2"}
    new = load_keyring(key_file)
    assert [k.kid for k in new.payload] == ["p1", "p2"]
    assert new.payload[0] == old.payload[0] and new.seal[0] == old.seal[0]
    assert [k.kid for k in load_keyring(tmp_path / "codec-keys.json").payload] == ["p1", "p2"]
    assert load_keyring(tmp_path / "codec-keys.json").seal == ()

    new_client = _client(temporal_env, new)
    async with Worker(
        new_client, task_queue=task_queue, workflows=[RotationProbe], activities=[reissue_token]
    ):
        new_handle = new_client.get_workflow_handle_for(RotationProbe.run, workflow_id)
        await new_handle.signal(RotationProbe.approve, Approval(approver_note=Secret(note)))
        result = await asyncio.wait_for(new_handle.result(), timeout=30)
    assert result.token.reveal() == token + "-v2"
    assert result.echoed.reveal() == token
    assert result.note.reveal() == note
    # one history, written under both keys
    assert await _key_ids(new_handle) == {b"p1", b"p2"}

    history = await new_handle.fetch_history()
    replay = Replayer(workflows=[RotationProbe], data_converter=data_converter(EncryptionCodec(new)))
    outcome = await replay.replay_workflow(history)
    assert outcome.replay_failure is None

    # the replay really decodes: without the old key it cannot read the start input
    only_new = Keyring(payload=new.payload[1:], seal=new.seal[1:], principal=new.principal)
    broken = Replayer(workflows=[RotationProbe], data_converter=data_converter(EncryptionCodec(only_new)))
    # (the failure's message is itself encrypted; its type name is not)
    with pytest.raises(Exception, match="PayloadDecryptionError"):
        await broken.replay_workflow(history)
