"""Crashes: the worker process is SIGKILLed between the provider's commit (resource + charge) and the
response; the Temporal dev server is SIGKILLed while a request waits for a human. Both requests finish,
with exactly one resource and one charge."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import worker as worker_module
from models.provisioning import ProvisionResult
from providers.registry import ProviderRegistry
from quartermaster.codec import EncryptionCodec
from quartermaster.converter import data_converter
from quartermaster.orchestration.requests import Orchestrator
from tests.fixtures.browser import connect_when_ready, temporal_dev_server
from tests.fixtures.servers import free_port
from tests.fixtures.stack import Stack, new_email
from tests.test_provision_e2e import charges_for, resources_named

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def worker_process(
    stack: Stack, task_queue: str, address: str, **extra_env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`python worker.py` as an agent operator runs it, configured only through the environment."""
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": address,
        "QM_TASK_QUEUE": task_queue,
        "QM_DATA_DIR": str(stack.data_dir),
        "QM_PUBLIC_URL": stack.gateway_url,
        "QM_STRIPE_BASE_URL": stack.stripe_url,
        "QM_PROVIDERS": ",".join(f"{k}={v}" for k, v in stack.provider_urls.items()),
        "STRIPE_WEBHOOK_SECRET": stack.settings.stripe_webhook_secret or "",
        # the same store file as the stack's in-process worker: SQLite is safe across processes as
        # long as no process reads the live files raw (docs/decisions.md)
        "QM_DATABASE_URL": stack.settings.resolved_database_url,
        "QM_DEV": "1",  # the dev inbox is its notification channel
        **extra_env,
    }
    proc = subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


async def test_worker_killed_between_commit_and_response(stack: Stack) -> None:
    task_queue = f"qm-crash-{uuid.uuid4().hex[:6]}"
    settings = stack.settings.model_copy(update={"task_queue": task_queue})
    qm = Orchestrator(
        temporal=stack.client,
        settings=settings,
        keyring=stack.keyring,
        registry=ProviderRegistry.from_settings(settings),
    )
    address = stack.client.service_client.config.target_host
    email = new_email()
    req = stack.request("cloud/r2", email)
    with worker_process(stack, task_queue, address) as first:
        await qm.submit(req)
        terms = await stack.wait_for_approval(req.request_id, "terms")
        await stack.decide(terms["approval_id"], email)
        pm = await stack.wait_for_approval(req.request_id, "payment_method")
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"{stack.provider_urls['cloud']}/_sim/faults",
                json={"route": "/resources", "kind": "delay_after_commit", "seconds": 20},
            )
            assert r.status_code == 201
        await stack.attach_card(pm["details"]["checkout_url"])
        for _ in range(200):  # the provider committed the resource and the charge ...
            if await resources_named(stack, "cloud", req.name):
                break
            await asyncio.sleep(0.1)
        assert len(await resources_named(stack, "cloud", req.name)) == 1
        first.send_signal(signal.SIGKILL)  # ... and the worker dies before the response arrives
        killed_at = time.monotonic()
        first.wait(10)
    with worker_process(stack, task_queue, address):
        handle = stack.client.get_workflow_handle(f"provision-{req.request_id}", result_type=ProvisionResult)
        res = await asyncio.wait_for(handle.result(), 90)
        recovery = time.monotonic() - killed_at
    # a figure, not a timed assertion (it includes starting the new worker process)
    print(f"\nkill-to-completion after a SIGKILL between commit and response: {recovery:.1f} s")
    assert recovery < 60
    assert res.outcome == "completed", res
    assert len(await resources_named(stack, "cloud", req.name)) == 1
    assert len(await charges_for(stack, "cloud", req.request_id, req.name)) == 1


async def test_dev_server_killed_while_waiting_for_approval(stack: Stack, tmp_path: Path) -> None:
    converter = data_converter(EncryptionCodec(stack.keyring))
    port = free_port()
    db = tmp_path / "temporal.sqlite"
    settings = stack.settings.model_copy(update={"task_queue": f"qm-restart-{uuid.uuid4().hex[:6]}"})
    email = new_email()
    with temporal_dev_server(db, codec_endpoint=None, port=port, ui_port=free_port()) as server:
        client = await connect_when_ready(server.address, converter)
        qm = Orchestrator(
            temporal=client,
            settings=settings,
            keyring=stack.keyring,
            registry=ProviderRegistry.from_settings(settings),
        )
        req = stack.request("cloud/workers", email)
        async with worker_module.build_worker(client, settings, stack.keyring):
            await qm.submit(req)
            handle = client.get_workflow_handle(f"provision-{req.request_id}")
            for _ in range(300):
                if any(a["kind"] == "terms" for a in await handle.query("pending_approvals")):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("the request never reached the terms approval")
        server.proc.send_signal(signal.SIGKILL)  # the server dies mid-wait
        server.proc.wait(10)
    with temporal_dev_server(db, codec_endpoint=None, port=port, ui_port=free_port()) as server:
        client = await connect_when_ready(server.address, converter)
        qm = Orchestrator(
            temporal=client,
            settings=settings,
            keyring=stack.keyring,
            registry=ProviderRegistry.from_settings(settings),
            pending=stack.store.approvals,  # the worker's store (the same file)
        )
        async with worker_module.build_worker(client, settings, stack.keyring):
            pending = await qm.approvals(email)  # the restarted server still lists it
            assert [a.kind for a in pending] == ["terms"]
            approval_id = pending[0].approval_id
            from models.approval import ApprovalDecision
            from models.secret import Secret

            outcome = await qm.decide(
                ApprovalDecision(
                    approval_id=approval_id,
                    decision="approve",
                    code=Secret(stack.code_for(approval_id, email)),
                )
            )
            assert outcome.status == "ACCEPTED"
            res = await asyncio.wait_for(
                client.get_workflow_handle(
                    f"provision-{req.request_id}", result_type=ProvisionResult
                ).result(),
                60,
            )
    assert res.outcome == "completed", res
    assert len(await resources_named(stack, "cloud", req.name)) == 1
