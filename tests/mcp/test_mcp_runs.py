"""The MCP tools end to end with the SDK's own client: over stdio (`qm mcp` launched with exactly what
`qm run` injects) and over streamable HTTP (the API's `/mcp`), a free run and a paid one that waits for
the human; and the canary: no tool output ever holds a credential value, an approval code, a checkout
or authorization URL, or the agent's own tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import asynccontextmanager
from typing import Any

from mcp import Client

from models.money import Money
from quartermaster.client import QuartermasterClient
from quartermaster.mcp import SPEC_VERSION, build_server
from quartermaster.mcp.state import McpState
from tests.fixtures.stack import Stack, new_email
from tests.mcp.harness import Recorded, agent_tokens, over_http, over_stdio
from tests.mcp.runs import Canary, free_run, paid_run

TOOLS = {"catalog", "quote", "provision", "status", "resources", "remove", "rotate", "delegate"}


async def _principal(stack: Stack, services: list[str]) -> tuple[str, QuartermasterClient, str]:
    email = new_email()
    human = await stack.login(email)
    sid = await stack.open_session(
        human, email, "planner", allowed_services=services, budget=Money(amount=10_000, currency="usd")
    )
    return email, human, sid


async def test_tools_are_described_for_a_model() -> None:
    async with Client(build_server()) as client:  # in memory: listing needs no API
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description and len(tool.description) > 60, tool.name
        assert tool.input_schema["type"] == "object" and tool.output_schema, tool.name
        a = tool.annotations
        assert a is not None and a.read_only_hint is not None and a.idempotent_hint is not None, tool.name
        assert a.destructive_hint is not None, tool.name
    assert {n for n, t in tools.items() if t.annotations and t.annotations.read_only_hint} == {
        "catalog",
        "quote",
        "status",
        "resources",
    }
    assert {n for n, t in tools.items() if t.annotations and t.annotations.destructive_hint} == {
        "remove",
        "rotate",
    }
    assert "request_id" in tools["provision"].input_schema["required"]


async def test_stdio_free_run(stack: Stack) -> None:
    email, human, sid = await _principal(stack, ["cloud/*"])
    tokens = await agent_tokens(stack, human, "planner", sid)
    canary = Canary()
    async with over_stdio(tokens) as mcp:
        assert mcp.client.protocol_version == SPEC_VERSION  # the SDK's newest revision (docs/mcp.md)
        assert {t.name for t in await mcp.tools()} == TOOLS
        await free_run(stack, mcp, human, email, tokens, canary)
    assert mcp.outputs and not canary.leaks(mcp.outputs), canary.leaks(mcp.outputs)
    await human.aclose()


async def test_http_free_and_paid_runs_leak_nothing(stack: Stack) -> None:
    """The canary: every tool output of a full free run and a paid run, serialized, holds none of the
    values fetched through the human's login, no approval code, no checkout URL, no token."""
    email, human, sid = await _principal(stack, ["cloud/*", "db/*"])
    tokens = await agent_tokens(stack, human, "planner", sid)
    canary = Canary()
    async with over_http(stack.api_url, tokens.headers()) as mcp:
        assert mcp.client.protocol_version == SPEC_VERSION
        await free_run(stack, mcp, human, email, tokens, canary)
        await paid_run(stack, mcp, human, email, canary)
    urls = [v for v in canary.values if v.startswith("http")]
    assert urls, "the paid run went through Checkout: its URL is among the canaries"
    assert len(canary.values) > 6
    assert not canary.leaks(mcp.outputs), canary.leaks(mcp.outputs)
    await human.aclose()


async def test_the_canary_catches_a_leaking_tool(stack: Stack) -> None:
    """The broken variant: a server with one extra tool that returns credential values is caught."""
    email, human, sid = await _principal(stack, ["cloud/*"])
    tokens = await agent_tokens(stack, human, "planner", sid)
    agent = QuartermasterClient(
        stack.api_url, session_token=tokens.session_token, identity_token=tokens.identity_token
    )

    @asynccontextmanager
    async def lifespan(_: Any):  # type: ignore[no-untyped-def]
        yield McpState(client=agent)

    server = build_server(lifespan)

    @server.tool(name="leaky")
    async def leaky(resource_id: str) -> dict[str, str]:
        return await agent.resources.credentials(resource_id)  # exactly what no real tool may do

    canary = Canary()
    async with Client(server) as client:
        mcp = Recorded(client)
        view = await mcp.call(
            "provision", request_id="leak-1", service_id="cloud/workers", name="l1", wait_seconds=20
        )
        (w,) = view["waiting_for"]
        await human.approvals.decide(
            w["approval_id"], decision="approve", code=stack.code_for(w["approval_id"], email)
        )
        for _ in range(10):
            view = await mcp.call("status", request_id="leak-1", wait_seconds=25)
            if view["state"] == "completed":
                break
        await canary.add_credentials(human, view["resource_id"])
        assert not canary.leaks(mcp.outputs)
        await mcp.call("leaky", resource_id=view["resource_id"])
    assert canary.leaks(mcp.outputs), "the canary must catch a tool that returns values"
    await agent.aclose()
    await human.aclose()


def test_the_mcp_server_imports_nothing_of_the_server_side() -> None:
    code = (
        "import sys, quartermaster.mcp, quartermaster.mcp.server, quartermaster.cli.mcp_verbs\n"
        "server = ('temporalio', 'activities', 'providers', 'workflows')\n"
        "inner = ('quartermaster.api', 'quartermaster.orchestration', 'quartermaster.keys',"
        " 'quartermaster.codec', 'quartermaster.identity', 'quartermaster.crypto')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in server or m.startswith(inner)]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().replace("'", '"')) == []


def test_no_tool_reads_credential_values() -> None:
    """Source check beside the canary: the MCP package never calls the credentials route."""
    from pathlib import Path

    import quartermaster.mcp as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert ".credentials(" not in text, path
