"""The runs an agent makes through the MCP tools, and what the canary looks for in their outputs."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from quartermaster.client import QuartermasterClient
from tests.fixtures.stack import Stack
from tests.mcp.harness import AgentTokens, Recorded


@dataclass
class Canary:
    """Every value that must never reach a model: credentials, codes, the human's URLs, tokens."""

    values: set[str] = field(default_factory=set)

    def add(self, *values: str | None) -> None:
        self.values.update(v for v in values if v)

    async def add_credentials(self, human: QuartermasterClient, resource_id: str) -> None:
        creds = await human.resources.credentials(resource_id)
        # every value but *_RESOURCE_ID: that one is the reference the tools exist to return
        secret = [v for k, v in creds.items() if not k.endswith("_RESOURCE_ID")]
        assert secret and all(len(v) >= 8 for v in secret), "no real credential to look for"
        assert any(k.endswith("_API_TOKEN") for k in creds), creds.keys()
        self.add(*secret)

    def add_inbox(self, stack: Stack, email: str) -> None:
        for message in stack.inbox(email):
            code = message.get("code")
            if code:
                self.add(str(code), str(code).replace("-", ""))

    def leaks(self, outputs: list[str]) -> list[str]:
        return sorted({v[:6] + "..." for v in self.values for out in outputs if v in out})


async def human_acts(
    stack: Stack, human: QuartermasterClient, email: str, waiting: dict[str, Any], canary: Canary
) -> None:
    """The principal does what the result says they are asked to do, through the API (never the agent)."""
    approval = await human.approvals.get(waiting["approval_id"])
    details = approval.details or {}
    canary.add(details.get("checkout_url"), details.get("authorization_url"))
    if "checkout_url" in details:
        await stack.attach_card(details["checkout_url"])
    else:
        code = stack.code_for(waiting["approval_id"], email)
        canary.add(code)
        await human.approvals.decide(waiting["approval_id"], decision="approve", code=code)


async def provision_until_done(
    stack: Stack, mcp: Recorded, human: QuartermasterClient, email: str, canary: Canary, **args: Any
) -> dict[str, Any]:
    """Provision through the tool; whenever the result says a human is asked, the human acts; the
    agent only follows with `status`."""
    view = await mcp.call("provision", wait_seconds=20, **args)
    handled: list[str] = []
    asked: list[str] = []
    for _ in range(120):
        if view["state"] == "waiting_for_human":
            # the result tells the model what the human must do, and that it follows by `status`
            assert view["waiting_for"] and "status" in view["next_step"], view
            new = [w for w in view["waiting_for"] if w["approval_id"] not in handled]
            for waiting in new:
                assert waiting["asked_via"] and waiting["summary"], waiting
                handled.append(waiting["approval_id"])
                asked.append(waiting["kind"])
                await human_acts(stack, human, email, waiting, canary)
            if not new:
                await asyncio.sleep(0.25)  # the workflow has not seen the human's act yet
        elif view["state"] != "running":
            break
        view = await mcp.call("status", request_id=args["request_id"], wait_seconds=5)
    view["asked"] = asked
    return view


async def free_run(
    stack: Stack, mcp: Recorded, human: QuartermasterClient, email: str, tokens: AgentTokens, canary: Canary
) -> None:
    """catalog, quote, provision cloud/workers (terms first), status, resources, rotate, remove."""
    canary.add(tokens.session_token, tokens.identity_token)
    catalog = await mcp.call("catalog")
    services = {s["service_id"]: s for c in catalog["providers"] for s in c["services"]}
    assert services["cloud/workers"]["llm_context"], "the catalog tool carries llm_context"
    quote = await mcp.call("quote", service_id="cloud/workers")
    assert quote["service"]["service_id"] == "cloud/workers" and quote["due_now"] is None
    request_id = f"mcp-free-{secrets.token_hex(4)}"
    done = await provision_until_done(
        stack, mcp, human, email, canary, request_id=request_id, service_id="cloud/workers", name="w1"
    )
    assert done["state"] == "completed", done
    assert done["asked"] == ["terms"], done["asked"]
    resource_id = done["resource_id"]
    assert done["credential"]["names"] and "qm exec" in done["next_step"]
    again = await mcp.call("status", request_id=request_id)
    assert again["state"] == "completed" and again["resource_id"] == resource_id
    await canary.add_credentials(human, resource_id)
    listed = await mcp.call("resources")
    assert [r["resource_id"] for r in listed["resources"]] == [resource_id]
    assert listed["resources"][0]["credential_names"] == done["credential"]["names"]
    rotated = await mcp.call("rotate", resource_id=resource_id)
    assert rotated["outcome"] == "completed" and rotated["credential"]["names"], rotated
    assert rotated["credential"]["credential_id"] != done["credential"]["credential_id"]
    await canary.add_credentials(human, resource_id)
    removed = await mcp.call("remove", resource_id=resource_id)
    assert removed["outcome"] == "completed", removed
    assert (await mcp.call("resources"))["resources"] == []
    canary.add_inbox(stack, email)


async def paid_run(
    stack: Stack, mcp: Recorded, human: QuartermasterClient, email: str, canary: Canary
) -> str:
    """db/postgres:pro: terms, then a payment method the human adds on Checkout; the agent only polls."""
    quote = await mcp.call("quote", service_id="db/postgres:pro")
    assert quote["due_now"]["amount"] == 2500 or quote["recurring"]["amount"] == 2500, quote
    request_id = f"mcp-paid-{secrets.token_hex(4)}"
    done = await provision_until_done(
        stack, mcp, human, email, canary, request_id=request_id, service_id="db/postgres:pro", name="orders"
    )
    assert done["state"] == "completed", done
    assert "payment_method" in done["asked"], done["asked"]
    assert done["charge"]["amount"] > 0
    await canary.add_credentials(human, done["resource_id"])
    canary.add_inbox(stack, email)
    return str(done["resource_id"])
