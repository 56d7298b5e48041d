"""Every recorded history replays against the current workflow code with the worker's converter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

import worker
from quartermaster.codec import EncryptionCodec
from quartermaster.converter import data_converter
from quartermaster.keys import Keyring
from quartermaster.workflow_runner import workflow_runner
from workflows import authority as workflow_authority

HISTORIES = Path(__file__).parent / "histories"
FILES = sorted(HISTORIES.glob("*.json"))
FILES = [f for f in FILES if f.name != "test-keys.json"]


def _type_of(path: Path) -> str:
    events = json.loads(path.read_text())["events"]
    return str(events[0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"])


def test_every_workflow_type_has_a_recorded_history() -> None:
    recorded = {_type_of(f) for f in FILES}
    registered = {getattr(cls, "__temporal_workflow_definition").name for cls in worker.workflow_classes()}
    assert registered - recorded == set(), f"no recorded history for {sorted(registered - recorded)}"


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
async def test_history_replays(path: Path, keyring: Keyring) -> None:
    doc = json.loads(path.read_text())  # noqa: ASYNC240 - a small local file
    history = WorkflowHistory.from_json(doc.pop("workflowId"), doc)
    workflow_authority.install(keyring.authority_keys())  # as worker.build_worker does
    replayer = Replayer(
        workflows=list(worker.workflow_classes()),
        data_converter=data_converter(EncryptionCodec(keyring)),
        workflow_runner=workflow_runner(worker.PASSTHROUGH),  # the worker's runner replays them
    )
    await replayer.replay_workflow(history)
