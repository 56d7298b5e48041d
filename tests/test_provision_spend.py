"""Spend control inside provisioning: the USD 100 monthly cap per provider, the `spend_limit` approval
(deny undoes, approve-once completes), and a limit raised through `qm billing set-limit` + approval."""

from __future__ import annotations

import asyncio
import json

import pytest

from models.books import books_workflow_id
from models.provisioning import ProvisionResult
from quartermaster.cli import main_async as qm_main
from tests.fixtures.history_recorder import maybe_record
from tests.fixtures.stack import Stack, new_email
from tests.test_provision_e2e import charges_for, resources_named


async def _done(stack: Stack, request_id: str) -> ProvisionResult:
    handle = stack.client.get_workflow_handle(f"provision-{request_id}", result_type=ProvisionResult)
    return await asyncio.wait_for(handle.result(), 60)


async def _billing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], email: str
) -> dict:
    await _as_human(stack, monkeypatch, email)
    capsys.readouterr()
    assert await qm_main(["billing", "show", "--json"]) == 0
    summary = _json_line(capsys.readouterr().out)
    return dict(next(p for p in summary["providers"] if p["provider"] == "db")["ledger"])


_TOKENS: dict[str, str] = {}


def _json_line(out: str) -> dict:
    """The CLI's JSON answer; the in-process worker's dev notifier may print its own lines beside it."""
    return dict(json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{"))))


async def _as_human(stack: Stack, monkeypatch: pytest.MonkeyPatch, email: str) -> None:
    """The CLI as the logged-in human runs it: the API's address and a login token, nothing else."""
    if email not in _TOKENS:
        _TOKENS[email] = await stack.login_token(email)
    monkeypatch.setenv("QM_API_URL", stack.api_url)
    monkeypatch.setenv("QM_HUMAN_TOKEN", _TOKENS[email])


async def test_monthly_cap_asks_the_human_and_holds_exactly(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    email = new_email()
    # four USD 25 plans fill the USD 100 cap (the first one also accepts terms and adds a card)
    first = stack.request("db/postgres:pro", email)
    await stack.qm.submit(first)
    await stack.decide((await stack.wait_for_approval(first.request_id, "terms"))["approval_id"], email)
    pm = await stack.wait_for_approval(first.request_id, "payment_method")
    await stack.attach_card(pm["details"]["checkout_url"])
    assert (await _done(stack, first.request_id)).outcome == "completed"
    rest = [stack.request("db/postgres:pro", email) for _ in range(3)]
    for req in rest:
        await stack.qm.submit(req)
    assert [r.outcome for r in await asyncio.gather(*(_done(stack, r.request_id) for r in rest))] == [
        "completed"
    ] * 3
    db = await _billing(stack, monkeypatch, capsys, email)
    assert (db["committed"]["amount"], db["reserved"]["amount"], db["limit"]["amount"]) == (10_000, 0, 10_000)

    # the fifth would exceed the cap: the human is asked, with the figures; deny undoes everything
    over = stack.request("db/postgres:pro", email)
    await stack.qm.submit(over)
    ask = await stack.wait_for_approval(over.request_id, "spend_limit")
    assert ask["details"]["limit"]["amount"] == 10_000 and ask["details"]["committed"]["amount"] == 10_000
    await stack.decide(ask["approval_id"], email, "deny", reason="too much")
    res = await _done(stack, over.request_id)
    assert (res.outcome, res.error_code) == ("rejected", "APPROVAL_DENIED")
    assert await resources_named(stack, "db", over.name) == []
    assert await charges_for(stack, "db", over.request_id, over.name) == []

    # approved once: this purchase goes through, the cap stays USD 100 for the next one
    once = stack.request("db/postgres:pro", email)
    await stack.qm.submit(once)
    ask = await stack.wait_for_approval(once.request_id, "spend_limit")
    await stack.decide(ask["approval_id"], email)
    assert (await _done(stack, once.request_id)).outcome == "completed"
    db = await _billing(stack, monkeypatch, capsys, email)
    assert (db["committed"]["amount"], db["reserved"]["amount"], db["limit"]["amount"]) == (12_500, 0, 10_000)
    ledger = f"ledger-{stack.principal_id(email)}-db-"
    async for wf in stack.client.list_workflows(f"WorkflowId STARTS_WITH '{ledger}'"):
        await maybe_record(stack.client, wf.id, "spend-ledger-monthly")  # recorded before books

    # raising the limit is a human action: the CLI prints the approval and waits (exit 3)
    capsys.readouterr()
    await _as_human(stack, monkeypatch, email)
    argv = ["billing", "set-limit", "--usd", "200", "--provider", "db", "--json"]
    assert await qm_main(argv) == 3
    approval_id = _json_line(capsys.readouterr().out)["approval_id"]
    for _ in range(100):
        if any(m.get("approval_id") == approval_id for m in stack.inbox(email)):
            break
        await asyncio.sleep(0.05)
    assert await qm_main(["approve", approval_id, "--code", stack.code_for(approval_id, email)]) == 0
    for _ in range(100):
        db = await _billing(stack, monkeypatch, capsys, email)
        if db["limit"]["amount"] == 20_000:
            break
        await asyncio.sleep(0.1)
    # the purchase approved once stays outside the limit (docs/spend.md): 200 + 25 - 125 remain
    assert (db["limit"]["amount"], db["committed"]["amount"], db["remaining"]["amount"]) == (
        20_000,
        12_500,
        10_000,
    )
    await maybe_record(stack.client, approval_id.rpartition(".")[0], "limit-change")
    await maybe_record(stack.client, f"limits-{stack.principal_id(email)}", "principal-limits")
    await maybe_record(stack.client, books_workflow_id(stack.principal_id(email)), "spend-books")
