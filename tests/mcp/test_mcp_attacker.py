"""The attacker suite of the API, extended to MCP: an agent holding only what `qm run` injects, using the
tools over streamable HTTP and stdio, reaches nothing of another principal (NOT_FOUND, the victim's
resource untouched), finds no human-only action among the tools, and another agent's identity token
with its session is refused at the edge (401 with RFC 9728 metadata)."""

from __future__ import annotations

import httpx
import pytest

from models.errors import ErrorCode
from models.money import Money
from tests.fixtures.stack import Stack, new_email
from tests.mcp.harness import AgentTokens, ToolError, agent_tokens, over_http, over_stdio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "attacker", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
HUMAN_ONLY = ("approve", "decide", "deny", "freeze", "unfreeze", "limit", "billing", "revoke", "credential")


async def _agent(
    stack: Stack, services: list[str], agent: str = "planner", **grant: object
) -> tuple[str, AgentTokens]:
    email = new_email()
    async with await stack.login(email) as human:
        sid = await stack.open_session(human, email, agent, allowed_services=services, **grant)
        return email, await agent_tokens(stack, human, agent, sid)


async def _victim(stack: Stack) -> tuple[str, str, str]:
    """A principal with a live resource and a request; returns (email, request id, resource id)."""
    email = new_email()
    async with await stack.login(email) as human:
        sid = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
        async with await stack.agent(human, "planner", sid) as agent:
            view = await agent.provisions.create(
                service_id="cloud/workers", name="v1", request_id="victim-mcp-1", wait=20
            )
            for w in view.waiting_for:
                await human.approvals.decide(
                    w.approval_id, decision="approve", code=stack.code_for(w.approval_id, email)
                )
            done = await agent.provisions.wait("victim-mcp-1", timeout=30)
    assert done.state == "completed", done
    return email, "victim-mcp-1", done.resource_id or ""


async def test_another_principals_objects_are_not_found(stack: Stack) -> None:
    victim_email, request_id, resource_id = await _victim(stack)
    _, tokens = await _agent(stack, ["cloud/*"])
    async with over_http(stack.api_url, tokens.headers()) as mcp:
        for tool, args in (
            ("status", {"request_id": request_id}),
            ("rotate", {"resource_id": resource_id}),
            ("remove", {"resource_id": resource_id}),
        ):
            with pytest.raises(ToolError) as refused:
                await mcp.call(tool, **args)
            assert refused.value.code == ErrorCode.NOT_FOUND, (tool, refused.value)
        assert (await mcp.call("resources"))["resources"] == []
    async with over_stdio(tokens) as mcp:
        with pytest.raises(ToolError) as refused:
            await mcp.call("remove", resource_id=resource_id)
        assert refused.value.code == ErrorCode.NOT_FOUND
    # the victim's resource is still there, with the same credential
    async with await stack.login(victim_email) as victim:
        assert [r.resource_id for r in await victim.resources.list()] == [resource_id]


async def test_no_human_only_action_is_a_tool(stack: Stack) -> None:
    _, tokens = await _agent(stack, ["cloud/*"])
    async with over_http(stack.api_url, tokens.headers()) as mcp:
        tools = await mcp.tools()
    for tool in tools:
        assert not any(word in tool.name for word in HUMAN_ONLY), tool.name
        assert "code" not in tool.input_schema.get("properties", {}), tool.name
    assert {t.name for t in tools} == {
        "catalog",
        "quote",
        "provision",
        "status",
        "resources",
        "remove",
        "rotate",
        "delegate",
    }


async def test_delegate_narrows_and_shows_no_token(stack: Stack) -> None:
    _, tokens = await _agent(stack, ["cloud/*"], max_depth=1, budget=Money(amount=3000, currency="usd"))
    async with over_http(stack.api_url, tokens.headers()) as mcp:
        child = await mcp.call(
            "delegate", to_agent="helper", allowed_services=["cloud/workers"], budget={"amount": 500}
        )
        assert child["agent"] == "helper" and child["depth"] == 1
        assert child["grant"]["allowed_services"] == ["cloud/workers"]
        assert "token" not in str(sorted(child)).lower() and tokens.session_token not in str(child)
        with pytest.raises(ToolError) as wider:
            await mcp.call("delegate", to_agent="helper2", allowed_services=["db/*"])
        assert wider.value.code in {c.value for c in ErrorCode} and wider.value.code != "UNKNOWN_ERROR"


async def test_the_edge_refuses_what_the_api_refuses(stack: Stack) -> None:
    _, mine = await _agent(stack, ["cloud/*"])
    _, theirs = await _agent(stack, ["cloud/*"], agent="intruder")
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        meta = (await http.get("/.well-known/oauth-protected-resource")).json()
        assert meta["resource"] == stack.api_url and meta["bearer_methods_supported"] == ["header"]
        assert meta["mcp_endpoint"] == f"{stack.api_url}/mcp"
        forged = {**mine.headers(), "X-QM-Identity": theirs.identity_token}  # another agent's identity
        cases = [
            ({}, 401),
            ({"Authorization": f"Bearer {mine.session_token}"}, 401),  # no identity token
            (forged, 401),
            ({"Authorization": "Bearer a.b.c", "X-QM-Identity": mine.identity_token}, 401),
            ({"Authorization": f"Bearer {await stack.login_token(new_email())}"}, 403),  # a human
            ({**mine.headers(), "Origin": "https://evil.example"}, 403),
        ]
        for headers, status in cases:
            r = await http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers})
            assert r.status_code == status, (headers.keys(), r.status_code, r.text)
            assert r.json()["error"]["code"] in ("UNAUTHENTICATED", "FORBIDDEN")
            if status == 401:
                challenge = r.headers["www-authenticate"]
                assert challenge.startswith("Bearer ")
                assert (
                    f'resource_metadata="{stack.api_url}/.well-known/oauth-protected-resource"' in challenge
                )
        ok = await http.post("/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **mine.headers()})
        assert ok.status_code == 200, ok.text
    # over stdio the same forged pair reaches the API and every tool call is refused with its code
    forged_env = AgentTokens(stack.api_url, mine.session_token, theirs.identity_token)
    async with over_stdio(forged_env) as mcp:
        with pytest.raises(ToolError) as refused:
            await mcp.call("resources")
        assert refused.value.code == ErrorCode.UNAUTHENTICATED
