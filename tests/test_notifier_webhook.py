"""The human's notification channel outside dev: a signed https webhook, or the worker does not start.

A receiver on loopback checks every delivery's signature the way docs/notifications.md says, and the
approval code it received completes a real request."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import worker as worker_module
from models.provisioning import ProvisionResult
from providers.notifier import (
    SIGNATURE_HEADER,
    NotifierConfigError,
    SignatureError,
    WebhookNotifier,
    sign,
    verify_signature,
)
from quartermaster.keys import write_key_file
from tests.fixtures.servers import serve_asgi
from tests.fixtures.stack import Stack, new_email

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_notify_" + uuid.uuid4().hex


class Receiver:
    """What a chat/e-mail bridge does: verify the signature, then accept the message."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.refused = 0
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> JSONResponse:
        body = await request.body()
        try:
            verify_signature(body, request.headers.get(SIGNATURE_HEADER, ""), SECRET)
        except SignatureError:
            self.refused += 1
            return JSONResponse({"error": "bad signature"}, status_code=400)
        self.accepted.append(json.loads(body))
        return JSONResponse({"ok": True})


def test_webhook_must_be_https_except_on_loopback_and_must_be_signed() -> None:
    for url in ("http://hooks.example.com/qm", "ftp://127.0.0.1/x", "http://10.0.0.5/qm"):
        with pytest.raises(NotifierConfigError):
            WebhookNotifier(url=url, secret=SECRET)
    with pytest.raises(NotifierConfigError):
        WebhookNotifier(url="https://hooks.example.com/qm", secret="")
    for url in ("https://hooks.example.com/qm", "http://127.0.0.1:9/qm", "http://[::1]:9/qm"):
        WebhookNotifier(url=url, secret=SECRET)


def test_signature_check_refuses_tampering_replay_and_wrong_secret() -> None:
    body = b'{"code":"AAAAA-BBBBB"}'
    header = sign(body, SECRET)
    assert verify_signature(body, header, SECRET) > 0
    for bad_body, bad_header, secret in [
        (b'{"code":"AAAAA-CCCCC"}', header, SECRET),  # tampered body
        (body, header, "whsec_other"),  # wrong secret
        (body, sign(body, SECRET, timestamp=int(time.time()) - 3600), SECRET),  # an old delivery
        (body, "v1=" + header.split("v1=")[1], SECRET),  # no timestamp
        (body, "", SECRET),
    ]:
        with pytest.raises(SignatureError):
            verify_signature(bad_body, bad_header, secret)


async def test_signed_delivery_reaches_the_receiver_and_its_code_completes_the_request(
    stack: Stack,
) -> None:
    receiver = Receiver()
    with serve_asgi(receiver.app) as url:
        settings = stack.settings.model_copy(
            update={
                "task_queue": f"qm-notify-{uuid.uuid4().hex[:6]}",
                "notify_webhook_url": f"{url}/hook",
                "notify_webhook_secret": SECRET,
                "dev": False,
            }
        )
        qm = stack.qm.__class__(
            temporal=stack.client, settings=settings, keyring=stack.keyring, registry=stack.qm.registry
        )
        email = new_email()
        req = stack.request("cloud/workers", email)
        async with worker_module.build_worker(stack.client, settings, stack.keyring):
            await qm.submit(req)
            for _ in range(200):
                if receiver.accepted:
                    break
                await asyncio.sleep(0.05)
            (message,) = receiver.accepted
            assert message["type"] == "approval_request" and message["kind"] == "terms"
            assert message["to"] == email
            await stack.decide(message["approval_id"], email, code=message["code"])
            handle = stack.client.get_workflow_handle(
                f"provision-{req.request_id}", result_type=ProvisionResult
            )
            res = await asyncio.wait_for(handle.result(), 30)
    assert res.outcome == "completed", res
    assert receiver.refused == 0
    assert stack.inbox(email) == []  # nothing went to the dev inbox


@pytest.mark.parametrize(
    "extra",
    [{}, {"QM_NOTIFY_WEBHOOK_URL": "http://hooks.example.com/qm", "QM_NOTIFY_WEBHOOK_SECRET": SECRET}],
    ids=["no-channel", "plain-http-webhook"],
)
def test_worker_outside_dev_refuses_to_start_without_a_safe_channel(
    stack: Stack, tmp_path: Path, extra: dict[str, str]
) -> None:
    write_key_file(tmp_path / "keys.json", stack.keyring)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QM_", "TEMPORAL_", "STRIPE_"))}
    env |= {
        "QM_DATA_DIR": str(tmp_path),
        "QM_TASK_QUEUE": f"qm-refuse-{uuid.uuid4().hex[:6]}",
        # a reachable server: without the refusal this worker would start and poll
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        **extra,
    }
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the worker started without a safe notification channel")
    assert proc.returncode == 2
    assert b"QM_NOTIFY_WEBHOOK_URL" in err or b"https" in err
