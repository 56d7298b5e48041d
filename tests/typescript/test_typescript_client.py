"""The TypeScript SDK (`clients/typescript`, npm `@quartermaster/client`) and the TypeScript MCP SDK's
client, run by `npm test` (node's own test runner) against the live stack with exactly the environment
`qm run` gives an agent. Fails, never skips, when node, npm or the installed packages are missing:
`python3 bootstrap.py test` runs `npm ci` first."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from models.money import Money
from quartermaster.client import QuartermasterClient
from tests.fixtures.stack import Stack, new_email
from tests.mcp.harness import agent_tokens

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "typescript"


def _npm() -> str:
    npm, node = shutil.which("npm"), shutil.which("node")
    assert npm and node, "node and npm are needed for the TypeScript SDK's tests (Node 20+)"
    assert (PACKAGE / "node_modules" / "openapi-fetch").is_dir(), (
        f"run `npm ci` in {PACKAGE} (python3 bootstrap.py test does it)"
    )
    return npm


async def test_npm_test_against_the_live_api(stack: Stack) -> None:
    npm = _npm()
    email = new_email()
    human_token = await stack.login_token(email)
    async with QuartermasterClient(stack.api_url, human_token=human_token) as human:
        sid = await stack.open_session(
            human, email, "planner", allowed_services=["cloud/*", "db/*"], budget=Money(amount=10_000)
        )
        tokens = await agent_tokens(stack, human, "planner", sid)
    env = {
        **tokens.env(),
        # what the tests' human does (approve terms) goes through the API with the human's login
        "QM_TEST_HUMAN_TOKEN": human_token,
        "QM_TEST_EMAIL": email,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
    }
    proc = await asyncio.create_subprocess_exec(
        npm,
        "test",
        cwd=PACKAGE,
        env={**env, "PATH": os.environ.get("PATH", "")},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "# fail 0" in text and "# pass 7" in text and "# skipped 0" in text, text[-3000:]
