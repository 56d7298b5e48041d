"""The audit trail of a real purchase made by a sub-agent under a delegated session: `qm audit trace`
shows human -> planner -> sub-agent, the approvals and who approved them, the charge and the
credential, in order; `qm audit verify` passes; nothing secret is in the store or the exports."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from models.money import Money
from models.provisioning import ProvisionResult
from models.request import Actor
from models.session import DelegationRequest
from quartermaster.cli import main as qm_main
from tests.fixtures.files import read_bytes_in_child, store_files
from tests.fixtures.history_recorder import maybe_record
from tests.fixtures.providers import client_auth
from tests.fixtures.stack import Stack, new_email
from tests.leak_scan import canary_forms
from tests.ocsf_validator import ocsf_errors


async def _approve_session(stack: Stack, approval_id: str, email: str) -> None:
    for _ in range(200):
        if any(m.get("approval_id") == approval_id for m in stack.inbox(email)):
            break
        await asyncio.sleep(0.05)
    assert (await stack.decide(approval_id, email)).status == "ACCEPTED"


def _cli(
    monkeypatch: pytest.MonkeyPatch, stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str]:
    monkeypatch.setenv("QM_DATA_DIR", str(stack.data_dir))
    capsys.readouterr()
    code = qm_main(list(argv))
    return code, capsys.readouterr().out


async def test_sub_agent_purchase_trace(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    email = new_email()
    root = await stack.sessions.open(
        email=email, agent="planner", allowed_services=["cloud/*"], budget_minor=5000, max_depth=2
    )
    assert root.approval_id is not None
    await _approve_session(stack, root.approval_id, email)
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
            to_agent="builder",
            allowed_services=["cloud/r2"],
            budget=Money(amount=2000),
        )
    )
    actor = Actor(
        principal_email=email, agent="builder", session_token=child.session_token,
        identity_token=stack.identity("builder"),
    )  # fmt: skip
    req = stack.request("cloud/r2", email, actor=actor, scopes=["r2:write"])
    await stack.qm.submit(req)
    terms = await stack.wait_for_approval(req.request_id, "terms")
    await stack.decide(terms["approval_id"], email)
    pm = await stack.wait_for_approval(req.request_id, "payment_method")
    await stack.attach_card(pm["details"]["checkout_url"])
    handle = stack.client.get_workflow_handle(f"provision-{req.request_id}", result_type=ProvisionResult)
    res = await asyncio.wait_for(handle.result(), 60)
    assert res.outcome == "completed", res
    assert res.agent_chain == ["planner", "builder"]
    await maybe_record(stack.client, f"provision-{req.request_id}", "provision-sub-agent-session")
    await maybe_record(stack.client, f"session-{root.session_id}", "session-root")

    code, out = _cli(monkeypatch, stack, capsys, "audit", "trace", req.request_id, "--json")
    assert code == 0, out
    trace = json.loads(out)
    principal = stack.principal_id(email)
    assert trace["chain"] == [principal, "planner", "builder"]
    actions = [r["event"]["action"] for r in trace["records"]]
    expected = [
        "request.received", "authorization.decided", "approval.requested", "approval.granted",
        "terms.accepted", "account.created", "approval.requested", "approval.granted",
        "payment_token.issued", "charge.made", "resource.created", "payment_token.revoked",
        "credential.minted", "request.completed",
    ]  # fmt: skip
    assert [a for a in actions if a in expected] == expected
    granted = [r["event"] for r in trace["records"] if r["event"]["action"] == "approval.granted"]
    assert [g["approved_by"] for g in granted] == [
        principal,
        None,
    ]  # the card: settled at Stripe, not by code
    assert trace["charges"] and trace["charges"][0]["amount"]["amount"] == res.charge.amount.amount
    assert trace["credential_ids"] == [res.credential.credential_id]
    every = {r["event"]["session_ids"][-1] for r in trace["records"] if r["event"]["session_ids"]}
    assert every == {child.session_id}

    code, out = _cli(monkeypatch, stack, capsys, "audit", "verify", "--json")
    assert code == 0, out
    # no secret in the store or its exports: the minted token, the session tokens
    canaries = [res.credential.env["CLOUD_API_TOKEN"].reveal(), token.reveal(), child.session_token.reveal()]
    # the live store's files, read in a child process (tests/fixtures/files.py explains why)
    blobs = list(read_bytes_in_child(store_files(stack.data_dir)).values())
    for fmt in ("jsonl", "ocsf"):
        code, out = _cli(monkeypatch, stack, capsys, "audit", "export", "--format", fmt)
        assert code == 0
        blobs.append(out.encode())
    # every exported event is valid OCSF 1.7.0; the grant and the delegation are Authorize Session
    events = [json.loads(line) for line in out.splitlines()]
    assert events and all(ocsf_errors(e) == [] for e in events), [ocsf_errors(e) for e in events][:3]
    by_session = {
        (e["metadata"]["event_code"], e.get("session", {}).get("uid")): e
        for e in events
        if e["class_uid"] == 3003
    }
    opened = by_session[("session.opened", root.session_id)]
    delegated = by_session[("session.delegated", child.session_id)]
    assert opened["privileges"] == ["cloud/*"] and delegated["privileges"] == ["cloud/r2"]
    assert opened["user"]["uid"] == delegated["user"]["uid"] == principal
    assert [a["name"] for a in delegated["src_endpoint"]["agent_list"]] == ["planner", "builder"]
    for canary in canaries:
        for forms in canary_forms(canary).values():
            assert not any(form in blob for form in forms for blob in blobs)

    # the kill switch: freezing the sub-agent revokes what it holds at the provider
    await stack.sessions.freeze("builder", email=email)
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{stack.provider_urls['cloud']}/introspect",
            data={"token": canaries[0]},
            auth=client_auth(stack.data_dir, "cloud"),
        )
    assert r.json() == {"active": False}
    await maybe_record(stack.client, f"agent-{principal}-builder", "agent-freeze")
