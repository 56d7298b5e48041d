"""Leak scan over real provisioning paths: a paid success, a declined charge that is compensated, and a
rotation. The canaries are the real secrets those paths create (the minted API tokens, the account
credential, the payment tokens); the scan reads the raw history bytes of every workflow involved, the
search attributes, memos and IDs, the captured logs, the audit store and the exception text.
(`tests/test_canary_leaks.py` shows the same scan finds the canaries when the codec is off.)"""

from __future__ import annotations

import asyncio
import io
import logging
import sqlite3

import pytest

from models.provisioning import ProvisionResult
from models.request import Actor
from providers.store import open_store
from quartermaster.codec import SecretBox
from quartermaster.logging_setup import configure_logging
from tests.fixtures.files import read_bytes_in_child, store_files
from tests.fixtures.stack import Stack, new_email
from tests.leak_scan import find_canaries


def _payment_tokens(stack: Stack) -> set[str]:
    db = sqlite3.connect(stack.data_dir / "stripe.sqlite")
    try:
        return {r[0] for r in db.execute("SELECT id FROM objects WHERE kind = 'shared_payment.issued_token'")}
    finally:
        db.close()


async def _result(stack: Stack, request_id: str) -> ProvisionResult:
    handle = stack.client.get_workflow_handle(f"provision-{request_id}", result_type=ProvisionResult)
    return await asyncio.wait_for(handle.result(), 60)


async def test_no_secret_of_a_provisioning_reaches_temporal_logs_or_audit(
    stack: Stack, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(logging.DEBUG, stream=io.StringIO())  # what worker.py and the CLI install
    caplog.set_level(logging.DEBUG)
    try:
        await _scenario(stack, caplog, capfd)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def _scenario(
    stack: Stack, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    before = _payment_tokens(stack)
    email = new_email()
    # 1. success: new account (terms), card on the Checkout page, paid resource, credential
    ok = stack.request("cloud/r2", email)
    await stack.qm.submit(ok)
    await stack.decide((await stack.wait_for_approval(ok.request_id, "terms"))["approval_id"], email)
    pm = await stack.wait_for_approval(ok.request_id, "payment_method")
    await stack.attach_card(pm["details"]["checkout_url"])
    done = await _result(stack, ok.request_id)
    assert done.outcome == "completed"
    # 2. rotation: a second token, the first revoked
    rotated = await stack.qm.rotate(
        done.resource_id, Actor(principal_email=email, agent="planner", kind="human"), "canary"
    )
    assert rotated.outcome == "completed"
    # 3. a failing path with compensation: a card that declines at the charge
    email2 = new_email()
    bad = stack.request("mail/send:starter", email2)
    await stack.qm.submit(bad)
    await stack.decide((await stack.wait_for_approval(bad.request_id, "terms"))["approval_id"], email2)
    pm2 = await stack.wait_for_approval(bad.request_id, "payment_method")
    await stack.attach_card(pm2["details"]["checkout_url"], card="pm_card_chargeDeclined")
    failed = await _result(stack, bad.request_id)
    assert (failed.outcome, failed.error_code) == ("undone", "PAYMENT_DECLINED")
    assert "payment token revoked" in failed.compensations

    store = open_store(stack.settings.resolved_database_url, sealer=SecretBox(stack.keyring))
    account = await store.connections.get_connection(principal_id=stack.principal_id(email), provider="cloud")
    assert account is not None
    canaries = [
        done.credential.env["CLOUD_API_TOKEN"].reveal(),
        rotated.credential.env["CLOUD_API_TOKEN"].reveal(),
        account.credential.reveal(),
        *(_payment_tokens(stack) - before),
    ]
    assert len(canaries) >= 5  # two API tokens, the account credential, two payment tokens
    workflow_ids = [
        f"provision-{ok.request_id}",
        f"provision-{bad.request_id}",
        f"rotate-{done.resource_id}-canary",
    ]
    async for wf in stack.client.list_workflows("WorkflowId STARTS_WITH 'ledger-'"):
        workflow_ids.append(wf.id)
    out, err = capfd.readouterr()
    extra = {
        "logs": "\n".join(r.getMessage() for r in caplog.records).encode(),
        "stdout": out.encode(),
        "stderr": err.encode(),
        "results": repr((done, rotated, failed)).encode(),
    }
    # the live store's files, read in a child process (tests/fixtures/files.py explains why)
    for path, blob in read_bytes_in_child(store_files(stack.data_dir)).items():
        extra[path.name] = blob
    findings = await find_canaries(stack.client, workflow_ids, canaries, extra)
    assert findings == [], findings
