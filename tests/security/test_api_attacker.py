"""An agent that holds only what `qm run` injects (its identity and session tokens), and a logged-in
human, attack another principal through the API. Every attempt is refused with its code, and the
victim's ledgers, the provider simulators and the local Stripe server show no change. The same attack
run against a deliberately broken API (ownership checks disabled) reports breaches: the suite can fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from providers.store.approvals import encode_cursor
from quartermaster.client import QuartermasterClient
from quartermaster.config import LOCAL_STRIPE_KEY
from tests.fixtures.stack import Stack, new_email


@dataclass
class Victim:
    email: str
    human: QuartermasterClient
    session_id: str
    request_id: str
    resource_id: str
    approval_id: str
    #: the victim agent's session token, as if it had leaked
    session_token: str


async def _victim(stack: Stack) -> Victim:
    email = new_email()
    human = await stack.login(email)
    sid = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
    async with await stack.agent(human, "planner", sid) as agent:
        view = await agent.provisions.create(
            service_id="cloud/workers", name="v1", request_id="victim-1", wait=20
        )
        w = view.waiting_for[0]
        await human.approvals.decide(
            w.approval_id, decision="approve", code=stack.code_for(w.approval_id, email)
        )
        done = await agent.provisions.wait("victim-1", timeout=30)
        assert done.state == "completed", done
        # a second request left waiting for the human's approval (a paid plan: payment method)
        pending = await agent.provisions.create(
            service_id="cloud/r2", name="v2", request_id="victim-2", wait=20
        )
        leaked = agent._headers()["Authorization"].removeprefix("Bearer ")
    assert pending.state == "waiting_for_human", pending
    return Victim(
        email, human, sid, "victim-1", done.resource_id or "", pending.waiting_for[0].approval_id, leaked
    )


async def _raw(url: str, method: str, path: str, headers: dict[str, str], json: Any = None) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.request(method, url + path, headers=headers, json=json)


def _headers(client: QuartermasterClient) -> dict[str, str]:
    return client._headers()


async def _snapshot(stack: Stack, victim: Victim) -> Any:
    billing = await victim.human.billing.show()
    resources = sorted(r.resource_id for r in await victim.human.resources.list())
    approvals = sorted(a.approval_id for a in await victim.human.approvals.list())
    session = (await victim.human.sessions.get(victim.session_id)).status
    async with httpx.AsyncClient() as http:
        r = await http.get(
            f"{stack.stripe_url}/v1/payment_intents?limit=100",
            headers={"Authorization": f"Bearer {LOCAL_STRIPE_KEY}"},
        )
        charges = sorted((p["id"], p["amount"], p["status"]) for p in r.json()["data"])
    return {
        "billing": [
            (p.provider, p.ledger.limit.amount, p.ledger.committed.amount) for p in billing.providers
        ],
        "resources": resources,
        "approvals": approvals,
        "session": session,
        "cloud": await stack.provider_state("cloud"),
        "stripe": charges,
    }


async def attack(stack: Stack, victim: Victim) -> list[str]:
    """Every attempt; returns the breaches (an attempt that was not refused as it must be)."""
    url = stack.api_url
    breaches: list[str] = []
    attacker_email = new_email()
    attacker_human = await stack.login(attacker_email)
    sid = await stack.open_session(attacker_human, attacker_email, "planner", allowed_services=["cloud/*"])
    attacker = await stack.agent(attacker_human, "planner", sid)
    agent_h, human_h = _headers(attacker), _headers(attacker_human)

    async def expect(
        label: str, method: str, path: str, headers: dict[str, str], status: int, code: str, json: Any = None
    ) -> None:
        r = await _raw(url, method, path, headers, json)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        got = body.get("error", {}).get("code") if isinstance(body, dict) else None
        if r.status_code != status or got != code:
            breaches.append(f"{label}: {method} {path} -> {r.status_code} {got}")

    res, ses, app = victim.resource_id, victim.session_id, victim.approval_id
    for who, h in (("agent", agent_h), ("human", human_h)):
        await expect(f"{who} reads another's resource", "GET", f"/v1/resources/{res}", h, 404, "NOT_FOUND")
        await expect(
            f"{who} reads another's credential",
            "GET",
            f"/v1/resources/{res}/credentials",
            h,
            404,
            "NOT_FOUND",
        )
        await expect(
            f"{who} rotates another's resource", "POST", f"/v1/resources/{res}/rotate", h, 404, "NOT_FOUND"
        )
        await expect(
            f"{who} removes another's resource", "DELETE", f"/v1/resources/{res}", h, 404, "NOT_FOUND"
        )
        await expect(f"{who} reads another's session", "GET", f"/v1/sessions/{ses}", h, 404, "NOT_FOUND")
        await expect(
            f"{who} reads another's request",
            "GET",
            f"/v1/provisions/{victim.request_id}",
            h,
            404,
            "NOT_FOUND",
        )
        measurement = {
            "executable": "/bin/true",
            "sha256": "0" * 64,
            "sha256_of": "binary",
            "argv": ["true"],
            "uid": 0,
            "host": "h",
            "cwd": "/",
            "measured_at": "2026-12-01T00:00:00Z",
        }
        await expect(
            f"{who} attests into another's session",
            "POST",
            "/v1/identities",
            h,
            404,
            "NOT_FOUND",
            {"agent": "planner", "measurement": measurement, "session_id": ses},
        )
        plan = {"to_service_id": "cloud/workers:paid"}
        for verb in ("plan/quote", "upgrade", "downgrade"):
            await expect(
                f"{who} changes another's plan ({verb})",
                "POST",
                f"/v1/resources/{res}/{verb}",
                h,
                404,
                "NOT_FOUND",
                plan,
            )
        listed = await _raw(url, "GET", "/v1/resources", h)
        if res in listed.text:
            breaches.append(f"{who} lists another's resource")
    # decisions and approval details: human only, and only one's own
    decision = {"decision": "approve", "code": "AAAAA-AAAAA"}
    await expect(
        "agent decides", "POST", f"/v1/approvals/{app}/decision", agent_h, 403, "FORBIDDEN", decision
    )
    await expect("agent lists approvals", "GET", "/v1/approvals", agent_h, 403, "FORBIDDEN")
    await expect(
        "human decides another's",
        "POST",
        f"/v1/approvals/{app}/decision",
        human_h,
        404,
        "NOT_FOUND",
        decision,
    )
    await expect("human reads another's approval", "GET", f"/v1/approvals/{app}", human_h, 404, "NOT_FOUND")
    # the pending-approvals list (the store's read model): one's own only, whatever the cursor says
    for cursor in (None, encode_cursor(0, ""), encode_cursor(0, app.rsplit(".", 1)[0])):
        listed = await _raw(url, "GET", "/v1/approvals" + (f"?cursor={cursor}" if cursor else ""), human_h)
        if listed.status_code != 200 or app in listed.text or victim.email in listed.text:
            breaches.append(f"human lists another's approval (cursor {cursor})")
    await expect("a forged cursor", "GET", "/v1/approvals?cursor=bm9wZQ", human_h, 400, "INVALID_REQUEST")
    await expect("a page over the largest", "GET", "/v1/approvals?limit=501", human_h, 400, "INVALID_REQUEST")
    # human-only routes refuse the agent
    for method, path, body in (
        (
            "POST",
            "/v1/sessions",
            {"agent": "planner", "allowed_services": ["*/*"], "budget": {"amount": 10**8, "currency": "usd"}},
        ),
        ("POST", f"/v1/sessions/{sid}/revoke", {}),
        ("POST", "/v1/agents/planner/unfreeze", {}),
        ("POST", "/v1/agents/planner/freeze", {}),
        ("GET", "/v1/billing", None),
        ("GET", "/v1/billing/forecast", None),
        ("POST", "/v1/links", {"provider": "db"}),
        ("GET", "/v1/links/db", None),
        ("POST", "/v1/billing/limits", {"limit": {"amount": 100_000_000, "currency": "usd"}}),
        (
            "POST",
            "/v1/billing/limits",
            {"kind": "velocity", "agent": "planner", "purchases_per_hour": 10_000},
        ),
    ):
        await expect(f"agent calls human-only {path}", method, path, agent_h, 403, "FORBIDDEN", body)
    # widening a session by delegation is refused by the session entity
    r = await _raw(
        url,
        "POST",
        "/v1/sessions/delegate",
        agent_h,
        {"to_agent": "helper", "budget": {"amount": 10**7, "currency": "usd"}},
    )
    if r.status_code < 400:
        breaches.append("agent widened its budget by delegation")
    # forged, garbage and mixed tokens
    await expect("no token", "GET", "/v1/resources", {}, 401, "UNAUTHENTICATED")
    await expect(
        "garbage bearer", "GET", "/v1/resources", {"Authorization": "Bearer qmh_nope"}, 401, "UNAUTHENTICATED"
    )
    forged = dict(agent_h)
    forged["X-QM-Identity"] = stack.identity("other-agent").reveal()
    await expect("another agent's identity", "GET", "/v1/resources", forged, 401, "UNAUTHENTICATED")
    # the victim's leaked session token with the attacker's own identity (same agent name, "planner")
    mixed = {"Authorization": f"Bearer {victim.session_token}", "X-QM-Identity": agent_h["X-QM-Identity"]}
    await expect(
        "a leaked session token with my identity", "GET", "/v1/resources", mixed, 401, "UNAUTHENTICATED"
    )
    no_identity = {"Authorization": agent_h["Authorization"]}
    await expect("session token alone", "GET", "/v1/resources", no_identity, 401, "UNAUTHENTICATED")
    await attacker.aclose()
    await attacker_human.aclose()
    return breaches


async def test_every_attack_is_refused_and_changes_nothing(stack: Stack) -> None:
    victim = await _victim(stack)
    before = await _snapshot(stack, victim)
    breaches = await attack(stack, victim)
    assert breaches == []
    assert await _snapshot(stack, victim) == before
    await victim.human.aclose()


async def test_the_suite_catches_a_broken_api(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = await _victim(stack)
    monkeypatch.setattr(stack.api, "authorization_disabled", True)
    # and a read model that forgets whose approvals it lists
    read_model = stack.api.orchestrator.pending
    assert read_model is not None
    victim_id = stack.principal_id(victim.email)

    async def everyones(principal_id: str, **page: Any) -> Any:
        return await read_model.pending(victim_id, **page)

    monkeypatch.setattr(read_model, "pending", everyones)
    breaches = await attack(stack, victim)
    assert any("another's credential" in b for b in breaches), breaches
    assert any("lists another's resource" in b for b in breaches), breaches
    assert any("lists another's approval" in b for b in breaches), breaches
    await victim.human.aclose()
