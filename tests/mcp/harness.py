"""Real MCP clients on the real stack: the `mcp` SDK's client over stdio (`qm mcp` launched with an
agent's environment, as `qm run` would) and over streamable HTTP (the API's `/mcp`), and a recorder of
every tool output for the canary."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult

from quartermaster.client import QuartermasterClient
from quartermaster.identity.attestation import measure
from tests.fixtures.stack import Stack

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class AgentTokens:
    """Exactly what `qm run` injects into an agent's process."""

    api_url: str
    session_token: str
    identity_token: str

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SYSTEMROOT")}
        return {
            **keep,
            "QM_API_URL": self.api_url,
            "QM_SESSION_TOKEN": self.session_token,
            "QM_IDENTITY_TOKEN": self.identity_token,
            "QM_CONFIG_DIR": "/nonexistent-qm-config",
        }

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session_token}", "X-QM-Identity": self.identity_token}


async def agent_tokens(stack: Stack, human: QuartermasterClient, agent: str, session_id: str) -> AgentTokens:
    """Attest a process into the session through the human's login, as `qm run` does."""
    got = await human.identities.attest(
        agent=agent, measurement=measure(["true"]).model_dump(mode="json"), session_id=session_id
    )
    assert got.session_token is not None
    return AgentTokens(stack.api_url, got.session_token, got.identity_token)


class ToolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class Recorded:
    """A client that keeps every tool result it saw, serialized, for the canary."""

    client: Client
    outputs: list[str] = field(default_factory=list)

    async def call(self, tool: str, /, **arguments: Any) -> dict[str, Any]:
        result: CallToolResult = await self.client.call_tool(tool, arguments)
        self.outputs.append(result.model_dump_json())
        if result.is_error:
            text = "".join(getattr(c, "text", "") for c in result.content)
            # the SDK prefixes "Error executing tool NAME: "; the rest is the API's error shape
            assert "{" in text, f"{tool}: {text}"
            err = json.loads(text[text.index("{") :])["error"]
            raise ToolError(err["code"], err["message"])
        assert result.structured_content is not None, result
        return dict(result.structured_content)

    async def tools(self) -> list[Any]:
        listed = await self.client.list_tools()
        self.outputs.append(listed.model_dump_json())
        return list(listed.tools)


@asynccontextmanager
async def over_stdio(tokens: AgentTokens) -> AsyncIterator[Recorded]:
    params = StdioServerParameters(command=str(BIN / "qm"), args=["mcp"], env=tokens.env())
    async with Client(params) as client:
        yield Recorded(client)


@asynccontextmanager
async def over_http(url: str, headers: dict[str, str]) -> AsyncIterator[Recorded]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60)) as http,
        Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
    ):
        yield Recorded(client)
