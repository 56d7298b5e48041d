"""The agent layers inside provisioning, end to end: the human sets each limit with `qm billing
set-limit` and its approval, then purchases at each edge. A refused purchase ends `rejected` with the
layer's own code and leaves no resource and no charge at the local Stripe server; `qm billing show`
reports every layer; concurrent purchases at the velocity edge: exactly N complete."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from models.errors import ErrorCode
from models.ledger import agent_ledger_id, velocity_ledger_id
from models.money import Money
from models.payment import ChargeResult
from models.provisioning import ProvisionResult
from models.request import Actor, ProvisionRequest
from models.secret import Secret
from models.session import DelegationRequest
from quartermaster.cli import main_async as qm_main
from quartermaster.client import QuartermasterClient
from quartermaster.client.api import IDENTITY_HEADER
from quartermaster.client.errors import ApiError
from tests.fixtures.history_recorder import maybe_record
from tests.fixtures.stack import Stack, new_email
from tests.test_provision_e2e import charges_for, resources_named
from tests.test_provision_spend import _as_human, _json_line

SERVICE = "cloud/r2"  # USD 5.00 a month


async def _done(stack: Stack, request_id: str) -> ProvisionResult:
    handle = stack.client.get_workflow_handle(f"provision-{request_id}", result_type=ProvisionResult)
    return await asyncio.wait_for(handle.result(), 60)


#: the agents' API headers (what `qm run` injects), by agent name
_HEADERS: dict[str, dict[str, str]] = {}


async def _quote_warnings(stack: Stack, headers: dict[str, str]) -> list[str]:
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        r = await http.post("/v1/quotes", json={"service_id": SERVICE}, headers=headers)
    assert r.status_code == 200, r.text
    return [w["code"] for w in r.json()["warnings"]]


async def _agent(stack: Stack, email: str, agent: str) -> Actor:
    """An agent under its own approved session, holding what `qm run` injects (as the API builds its
    actor from those tokens)."""
    human = await stack.login(email)
    sid = await stack.open_session(human, email, agent, allowed_services=["cloud/*"])
    client = await stack.agent(human, agent, sid)
    headers = client._headers()
    await client.aclose()
    await human.aclose()
    _HEADERS[agent] = headers
    return Actor(
        principal_email=email,
        agent=agent,
        session_token=Secret(headers["Authorization"].removeprefix("Bearer ")),
        identity_token=Secret(headers[IDENTITY_HEADER]),
    )


def _request(stack: Stack, email: str, actor: Actor) -> ProvisionRequest:
    return stack.request(SERVICE, email, request_id=uuid.uuid4().hex[:16], actor=actor)


async def _buy(
    stack: Stack, email: str, actor: Actor
) -> tuple[ProvisionResult, list[ChargeResult], ProvisionRequest]:
    """One purchase to its end; its charges at the local Stripe server (and the provider's books)."""
    req = _request(stack, email, actor)
    await stack.qm.submit(req)
    res = await _done(stack, req.request_id)
    charges = await charges_for(stack, "cloud", req.request_id, req.name)
    return res, [ChargeResult.model_validate(c) for c in charges], req


async def _cli(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], email: str, *argv: str
) -> tuple[int, dict[str, Any]]:
    await _as_human(stack, monkeypatch, email)
    capsys.readouterr()
    rc = await qm_main([*argv, "--json"])
    return rc, _json_line(capsys.readouterr().out)


async def _show(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], email: str
) -> dict[str, Any]:
    rc, summary = await _cli(stack, monkeypatch, capsys, email, "billing", "show")
    assert rc == 0
    return summary


async def _set_limit(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], email: str, *argv: str
) -> str:
    """`qm billing set-limit ...` waits for the human (exit 3); nothing applies until the code is given."""
    before = (await _show(stack, monkeypatch, capsys, email))["limits"]
    rc, pending = await _cli(stack, monkeypatch, capsys, email, "billing", "set-limit", *argv)
    assert (rc, pending["error"]["code"]) == (3, "LIMIT_CHANGE_APPROVAL_REQUIRED"), pending
    approval_id = pending["approval_id"]
    for _ in range(100):
        if any(m.get("approval_id") == approval_id for m in stack.inbox(email)):
            break
        await asyncio.sleep(0.05)
    assert (await _show(stack, monkeypatch, capsys, email))["limits"] == before  # not yet approved
    code = stack.code_for(approval_id, email)
    assert await qm_main(["approve", approval_id, "--code", code]) == 0
    for _ in range(100):
        if (await _show(stack, monkeypatch, capsys, email))["limits"]["version"] > before["version"]:
            return str(approval_id)
        await asyncio.sleep(0.1)
    raise AssertionError(f"limit change {approval_id} never applied")


async def test_agent_limits_refuse_at_their_edges_and_charge_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    email = new_email()
    planner, builder = await _agent(stack, email, "planner"), await _agent(stack, email, "builder")
    first = _request(stack, email, planner)  # terms and a card, once
    await stack.qm.submit(first)
    await stack.decide((await stack.wait_for_approval(first.request_id, "terms"))["approval_id"], email)
    pm = await stack.wait_for_approval(first.request_id, "payment_method")
    await stack.attach_card(pm["details"]["checkout_url"])
    assert (await _done(stack, first.request_id)).outcome == "completed"

    # per-purchase maximum: USD 4.99 refuses the USD 5 plan; USD 5 allows it
    await _set_limit(
        stack, monkeypatch, capsys, email, "--kind", "per-transaction", "--agent", "planner", "--usd", "4.99"
    )
    # the agent can tell before it tries: its quote says so (an anonymous quote knows no agent)
    assert await _quote_warnings(stack, _HEADERS["planner"]) == ["TRANSACTION_LIMIT_EXCEEDED"]
    assert await _quote_warnings(stack, _HEADERS["builder"]) == []
    assert await _quote_warnings(stack, {}) == []
    res, charges, req = await _buy(stack, email, planner)
    assert (res.outcome, res.error_code, charges) == ("rejected", "TRANSACTION_LIMIT_EXCEEDED", [])
    assert await resources_named(stack, "cloud", req.name) == []
    await _set_limit(
        stack, monkeypatch, capsys, email, "--kind", "per-transaction", "--agent", "planner", "--usd", "5"
    )
    res, charges, _ = await _buy(stack, email, planner)
    assert res.outcome == "completed" and [c.amount.amount for c in charges] == [500]

    # the agent's month: USD 15 allows a third USD 5 purchase (exactly at the edge), not a fourth,
    # though the provider's USD 100 cap has room
    await _set_limit(
        stack, monkeypatch, capsys, email, "--kind", "agent-monthly", "--agent", "planner", "--usd", "15"
    )
    res, charges, _ = await _buy(stack, email, planner)
    assert res.outcome == "completed" and len(charges) == 1
    res, charges, req = await _buy(stack, email, planner)
    assert (res.outcome, res.error_code, charges) == ("rejected", "AGENT_MONTHLY_LIMIT_EXCEEDED", [])
    assert await resources_named(stack, "cloud", req.name) == []

    # velocity: two purchases an hour for another agent; four at once, exactly two complete
    velocity_change = await _set_limit(
        stack, monkeypatch, capsys, email, "--kind", "velocity", "--agent", "builder", "--per-hour", "2"
    )
    results = await asyncio.gather(*(_buy(stack, email, builder) for _ in range(4)))
    outcomes = sorted((r.outcome, r.error_code) for r, _, _ in results)
    assert outcomes == [("completed", None)] * 2 + [("rejected", "VELOCITY_LIMIT_EXCEEDED")] * 2
    assert sorted(len(c) for _, c, _ in results) == [0, 0, 1, 1]

    # `qm billing show`: the provider's ledger equals what Stripe kept (5 purchases of USD 5)
    summary = await _show(stack, monkeypatch, capsys, email)
    cloud = next(p for p in summary["providers"] if p["provider"] == "cloud")["ledger"]
    assert (cloud["committed"]["amount"], cloud["reserved"]["amount"]) == (2_500, 0)
    agents = {a["agent"]: a for a in summary["agents"]}
    p, b = agents["planner"], agents["builder"]
    assert p["limits"]["monthly"]["amount"] == 1_500 and p["monthly_source"] == "agent"
    assert p["limits"]["per_transaction"]["amount"] == 500
    assert (p["ledger"]["committed"]["amount"], p["remaining"]["amount"]) == (1_500, 0)
    assert (b["limits"]["purchases_per_hour"], b["purchases_last_hour"]) == (2, 2)
    assert b["ledger"]["committed"]["amount"] == 1_000
    # and the table a human reads
    await _as_human(stack, monkeypatch, email)
    capsys.readouterr()
    assert await qm_main(["billing", "show"]) == 0
    text = capsys.readouterr().out
    assert "per agent" in text and "2/2 (agent)" in text and "15.00 USD (agent)" in text
    # a human's own purchase (no session) is no agent's: a default maximum of USD 1 does not apply
    await _set_limit(stack, monkeypatch, capsys, email, "--kind", "per-transaction", "--usd", "1")
    own = stack.request(SERVICE, email)
    await stack.qm.submit(own)
    assert (await _done(stack, own.request_id)).outcome == "completed"
    assert len(await charges_for(stack, "cloud", own.request_id, own.name)) == 1

    completed = next(req for r, _, req in results if r.outcome == "completed")
    await maybe_record(stack.client, f"provision-{completed.request_id}", "provision-agent-layers")
    principal = stack.principal_id(email)
    await maybe_record(stack.client, velocity_change.rpartition(".")[0], "limit-change-velocity")
    await maybe_record(stack.client, f"limits-{principal}", "principal-limits-agent")
    await maybe_record(stack.client, velocity_ledger_id(principal, "builder"), "spend-ledger-velocity")
    await maybe_record(
        stack.client, agent_ledger_id(principal, "planner", datetime.now(UTC)), "spend-ledger-agent"
    )


async def test_set_limit_refuses_a_mismatched_kind(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    email = new_email()
    for argv in (
        ["--kind", "velocity", "--usd", "5"],
        ["--kind", "agent-monthly", "--per-hour", "3"],
        ["--kind", "agent-monthly", "--usd", "5", "--provider", "cloud"],
        ["--usd", "5", "--agent", "planner"],
    ):
        rc, out = await _cli(stack, monkeypatch, capsys, email, "billing", "set-limit", *argv)
        assert (rc, out["error"]["code"]) == (2, "INVALID_REQUEST"), (argv, out)
    # the API refuses the same for a client that skips the CLI's checks
    await _as_human(stack, monkeypatch, email)
    async with QuartermasterClient.from_env() as qm:
        for kwargs in ({"kind": "velocity"}, {"kind": "per_transaction", "purchases_per_hour": 3}):
            with pytest.raises(ApiError) as err:
                await qm.billing.set_limit(**kwargs)  # type: ignore[arg-type]
            assert (err.value.code, err.value.status) == (ErrorCode.INVALID_REQUEST, 400)


async def test_the_approval_page_names_the_agent_limit(stack: Stack) -> None:
    """What the human approves is what applies: the page of an agent-limit change says which limit,
    for which agent, and the new value (and shows no monthly cap effect)."""
    email = new_email()
    async with await stack.login(email) as human:
        pending = await human.billing.set_limit(kind="velocity", agent="builder", purchases_per_hour=7)
    msg: dict[str, Any] = {}
    for _ in range(200):
        found = [m for m in stack.inbox(email) if m.get("approval_id") == pending.approval_id]
        if found:
            msg = found[-1]
            break
        await asyncio.sleep(0.05)
    async with httpx.AsyncClient(follow_redirects=True) as http:
        page = await http.get(msg["link"])
    assert page.status_code == 200, page.text[:300]
    assert "Change an agent&#x27;s limit" in page.text or "Change an agent's limit" in page.text
    assert "monthly spending limit" not in page.text
    assert "purchases per hour" in page.text and 'id="agent">builder<' in page.text
    assert "7 per rolling hour" in page.text and 'id="cap-effect"' not in page.text


async def test_a_delegate_buys_under_its_delegators_limits(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A sub-agent cannot escape its delegator's velocity limit under a new name: its purchases count
    in every agent of its chain."""
    email = new_email()
    await _set_limit(
        stack, monkeypatch, capsys, email, "--kind", "velocity", "--agent", "planner", "--per-hour", "1"
    )
    root = await stack.sessions.open(
        email=email, agent="planner", allowed_services=["cloud/*"], budget_minor=5000, max_depth=2
    )
    assert root.approval_id is not None
    for _ in range(200):
        if any(m.get("approval_id") == root.approval_id for m in stack.inbox(email)):
            break
        await asyncio.sleep(0.05)
    assert (await stack.decide(root.approval_id, email)).status == "ACCEPTED"
    token = None
    for _ in range(200):
        token = await stack.sessions.token(root.session_id)
        if token is not None:
            break
        await asyncio.sleep(0.05)
    assert token is not None
    child = await stack.sessions.delegate(
        DelegationRequest(
            session_token=token,
            identity_token=stack.identity("planner"),
            to_agent="helper",
            allowed_services=["cloud/r2"],
            budget=Money(amount=2000),
        )
    )
    helper = Actor(
        principal_email=email, agent="helper", session_token=child.session_token,
        identity_token=stack.identity("helper"),
    )  # fmt: skip
    first = _request(stack, email, helper)
    await stack.qm.submit(first)
    await stack.decide((await stack.wait_for_approval(first.request_id, "terms"))["approval_id"], email)
    pm = await stack.wait_for_approval(first.request_id, "payment_method")
    await stack.attach_card(pm["details"]["checkout_url"])
    done = await _done(stack, first.request_id)
    assert (done.outcome, done.agent_chain) == ("completed", ["planner", "helper"])
    res, charges, req = await _buy(stack, email, helper)  # helper has no limit; planner's one is used
    assert (res.outcome, res.error_code, charges) == ("rejected", "VELOCITY_LIMIT_EXCEEDED", [])
    assert await resources_named(stack, "cloud", req.name) == []
    summary = await _show(stack, monkeypatch, capsys, email)
    agents = {a["agent"]: a for a in summary["agents"]}
    assert agents["planner"]["purchases_last_hour"] == 1
    assert (
        agents["planner"]["ledger"]["committed"]["amount"]
        == agents["helper"]["ledger"]["committed"]["amount"]
        == 500
    )
