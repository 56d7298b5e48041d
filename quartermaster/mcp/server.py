"""`build_server()`: the MCP server and its tools. Every tool is one or two calls to the Quartermaster API
with the calling agent's own tokens; the API decides what the agent may do, and refusals come back as
tool errors carrying the API's stable code (`{"error": {"code", "message"}}`)."""

import json
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from mcp.types.version import LATEST_HANDSHAKE_VERSION, LATEST_PROTOCOL_VERSION
from pydantic import Field

from models.api import ProvisionView, ResourceAction
from models.catalog import ServiceId
from models.errors import QuartermasterError
from models.money import Money
from models.provisioning import Quote
from models.request import AgentName, RequestId, ResourceName
from models.session import ServicePattern
from quartermaster import __version__
from quartermaster.client import QuartermasterClient
from quartermaster.mcp.results import (
    USE_CREDENTIAL,
    CatalogResult,
    DelegatedSession,
    ProvisionOutcome,
    ResourceList,
    ResourceOutcome,
)
from quartermaster.mcp.state import McpState, from_env_lifespan

#: the newest MCP revision the SDK speaks (2026-07-28, per-request envelope); clients on the
#: initialize handshake negotiate up to LATEST_HANDSHAKE_VERSION (2025-11-25)
SPEC_VERSION = LATEST_PROTOCOL_VERSION
HANDSHAKE_SPEC_VERSION = LATEST_HANDSHAKE_VERSION
#: how long one tool call may wait server-side for a request to move (never for a human)
MAX_WAIT_SECONDS = 25

T = TypeVar("T")
Ctx = Context[McpState, Any]

INSTRUCTIONS = """\
Quartermaster provisions cloud services for you (databases, workers, mail, ...) within the budget and
the services your session allows. Typical flow: `catalog` (read each service's llm_context) -> `quote`
-> `provision` (choose a request_id; retrying with it is safe) -> `status` until completed -> use the
resource by running your program under `qm exec RESOURCE_ID -- COMMAND`.
Credentials are never shown to you: results name the environment variables a credential fills, and
`qm exec` puts the values in that process's environment. Some requests wait for the principal (a
human) to accept terms, add a payment method or approve a spend; you cannot do that for them: tell
your user and follow the request with `status`."""


async def _api(call: Awaitable[T]) -> T:
    """One API call; a refusal becomes a tool error the model reads, with the API's stable code."""
    try:
        return await call
    except QuartermasterError as err:
        raise ToolError(json.dumps({"error": {"code": str(err.code), "message": err.message}})) from None


def _client(ctx: Ctx) -> QuartermasterClient:
    rc = ctx.request_context
    return rc.lifespan_context.client_for(rc.request)


def _next_step(view: ProvisionView) -> str:
    rid = view.request_id
    if view.state == "running":
        return (
            f"Still running (step: {view.step or 'starting'}). Call `status` with "
            f'request_id="{rid}" and wait_seconds={MAX_WAIT_SECONDS} to follow it.'
        )
    if view.state == "waiting_for_human":
        asks = "; ".join(f"{w.kind}: {w.summary} (asked via {w.asked_via})" for w in view.waiting_for)
        return (
            f"Waiting for the principal, a human: {asks}. Only they can do this, on their own channel; "
            "you cannot approve it and must not ask for codes or links. Tell your user that the "
            f'principal has to act, then call `status` with request_id="{rid}" to follow.'
        )
    if view.state == "completed":
        names = ", ".join(view.credential.names) if view.credential else "no variables"
        return f"Ready: resource {view.resource_id} (credential fills {names}). " + USE_CREDENTIAL.format(
            resource_id=view.resource_id
        )
    err = view.error or {}
    return (
        f"Not provisioned ({view.state}): {err.get('code', 'UNKNOWN_ERROR')}: {err.get('message', '')}. "
        "Anything started was undone. Change the request (another service, plan or budget) and use a "
        "new request_id."
    )


def _outcome(view: ProvisionView) -> ProvisionOutcome:
    return ProvisionOutcome(**view.model_dump(), next_step=_next_step(view))


def _resource_outcome(action: ResourceAction, verb: str) -> ResourceOutcome:
    if action.outcome != "completed":
        err = action.error or {}
        step = f"{verb} failed: {err.get('code', 'UNKNOWN_ERROR')}: {err.get('message', '')}"
    elif action.credential is not None:
        step = (
            f"New credential {action.credential.credential_id} fills {', '.join(action.credential.names)}; "
        )
        step += "the old one is revoked. " + USE_CREDENTIAL.format(resource_id=action.resource_id)
    else:
        step = f"Resource {action.resource_id}: {verb} completed."
    return ResourceOutcome(**action.model_dump(), next_step=step)


def _register(server: MCPServer[McpState]) -> None:
    def tool(
        name: str, title: str, *, read_only: bool, destructive: bool, idempotent: bool
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return server.tool(
            name=name,
            title=title,
            annotations=ToolAnnotations(
                title=title,
                read_only_hint=read_only,
                destructive_hint=destructive,
                idempotent_hint=idempotent,
                open_world_hint=True,
            ),
        )

    @tool("catalog", "List services", read_only=True, destructive=False, idempotent=True)
    async def catalog(
        ctx: Ctx,
        provider: Annotated[
            str | None, Field(description="only this provider (e.g. 'db'); omit for all", max_length=31)
        ] = None,
    ) -> CatalogResult:
        """Discover what can be provisioned: every provider's services with prices, terms, configuration
        schema and `llm_context` (read it: it says when a service fits and how to use it). Free, changes
        nothing."""
        return CatalogResult(providers=await _api(_client(ctx).catalog.list(provider)))

    @tool("quote", "Price a service", read_only=True, destructive=False, idempotent=True)
    async def quote(
        ctx: Ctx,
        service_id: Annotated[ServiceId, Field(description="'<provider>/<service>' from `catalog`")],
        configuration: Annotated[
            dict[str, Any] | None, Field(description="per the service's configuration_schema")
        ] = None,
        max_price: Annotated[
            Money | None, Field(description="refuse if it costs more (minor units, e.g. cents)")
        ] = None,
    ) -> Quote:
        """Price a service without starting anything: due now, recurring, interval, and whether it can be
        undone."""
        return await _api(_client(ctx).quotes.create(service_id, configuration, max_price))

    @tool("provision", "Provision a service", read_only=False, destructive=False, idempotent=True)
    async def provision(
        ctx: Ctx,
        request_id: Annotated[
            RequestId,
            Field(description="your idempotency key (3-81 chars); the same id returns the same request"),
        ],
        service_id: Annotated[ServiceId, Field(description="'<provider>/<service>' from `catalog`")],
        name: Annotated[ResourceName, Field(description="a name for the resource, e.g. 'orders-db'")],
        configuration: Annotated[
            dict[str, Any] | None, Field(description="per the service's configuration_schema")
        ] = None,
        max_price: Annotated[Money | None, Field(description="refuse if it costs more than this")] = None,
        budget: Annotated[
            Money | None, Field(description="a cap for this request within the session")
        ] = None,
        scopes: Annotated[list[str] | None, Field(description="credential scopes to ask for")] = None,
        wait_seconds: Annotated[
            float, Field(ge=0, le=MAX_WAIT_SECONDS, description="wait up to this long for it to finish")
        ] = 10,
    ) -> ProvisionOutcome:
        """Start provisioning a service for your task (it may cost money, within your session's budget).
        Never blocks on a human: when the principal must accept terms, add a payment method or approve,
        the result says so (state `waiting_for_human`) and you follow it with `status`. When completed,
        the result names the resource and the environment variables its credential fills, never values."""
        view = await _api(
            _client(ctx).provisions.create(
                request_id=request_id,
                service_id=service_id,
                name=name,
                configuration=configuration,
                max_price=max_price,
                budget=budget,
                scopes=scopes,
                wait=wait_seconds,
            )
        )
        return _outcome(view)

    @tool("status", "Follow a request", read_only=True, destructive=False, idempotent=True)
    async def status(
        ctx: Ctx,
        request_id: Annotated[RequestId, Field(description="the request_id you gave `provision`")],
        wait_seconds: Annotated[
            float, Field(ge=0, le=MAX_WAIT_SECONDS, description="return early when it moves")
        ] = 0,
    ) -> ProvisionOutcome:
        """A provisioning request's state: running, waiting_for_human (what the principal must do),
        completed (resource and credential variable names), undone or rejected (with the error code)."""
        return _outcome(await _api(_client(ctx).provisions.get(request_id, wait=wait_seconds)))

    @tool("resources", "List my resources", read_only=True, destructive=False, idempotent=True)
    async def resources(ctx: Ctx) -> ResourceList:
        """Live resources provisioned under your session (or sessions delegated from it), with the names
        of the environment variables their credentials fill. Use one with `qm exec RESOURCE_ID -- CMD`."""
        return ResourceList(resources=await _api(_client(ctx).resources.list()))

    @tool("rotate", "Rotate a credential", read_only=False, destructive=True, idempotent=False)
    async def rotate(
        ctx: Ctx, resource_id: Annotated[str, Field(description="from `resources`", max_length=128)]
    ) -> ResourceOutcome:
        """Mint a new credential for a resource and revoke the old one (processes using the old one lose
        access; restart them under `qm exec`). Returns the new credential by reference only."""
        return _resource_outcome(await _api(_client(ctx).resources.rotate(resource_id)), "rotate")

    @tool("remove", "Remove a resource", read_only=False, destructive=True, idempotent=True)
    async def remove(
        ctx: Ctx, resource_id: Annotated[str, Field(description="from `resources`", max_length=128)]
    ) -> ResourceOutcome:
        """Delete a resource at its provider and revoke its credentials. Its data is gone: only remove
        what your task created and no longer needs."""
        return _resource_outcome(await _api(_client(ctx).resources.remove(resource_id)), "remove")

    @tool("delegate", "Delegate to a sub-agent", read_only=False, destructive=False, idempotent=False)
    async def delegate(
        ctx: Ctx,
        to_agent: Annotated[AgentName, Field(description="the sub-agent's name")],
        allowed_services: Annotated[
            list[ServicePattern] | None, Field(description="a subset of yours, e.g. ['db/*']")
        ] = None,
        budget: Annotated[Money | None, Field(description="at most what you have left")] = None,
        ttl_seconds: Annotated[int | None, Field(ge=60, description="at most your own session's")] = None,
    ) -> DelegatedSession:
        """Open a narrower session (fewer services, less budget, shorter life) for a sub-agent. The
        sub-agent is started into it with `qm run --agent NAME --session SESSION_ID -- COMMAND`; its
        token is never shown here."""
        state = await _api(
            _client(ctx).sessions.delegate(
                to_agent=to_agent, allowed_services=allowed_services, budget=budget, ttl_seconds=ttl_seconds
            )
        )
        return DelegatedSession(
            session_id=state.session_id,
            agent=state.agent,
            parent_id=state.parent_id,
            depth=state.depth,
            chain=state.chain,
            grant=state.grant,
            status=state.status,
            created_at=state.created_at,
            next_step=f"Start the sub-agent with: qm run --agent {state.agent} --session "
            f"{state.session_id} -- COMMAND",
        )


def build_server(
    lifespan: Callable[[MCPServer[McpState]], AbstractAsyncContextManager[McpState]] | None = None,
) -> MCPServer[McpState]:
    """The MCP server. Default lifespan: one client from what `qm run` injected (stdio, `qm mcp`)."""
    server: MCPServer[McpState] = MCPServer(
        "quartermaster",
        title="Quartermaster",
        description="Provision cloud services for an agent, within its session's budget.",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan or from_env_lifespan(),
    )
    _register(server)
    return server


async def run_stdio() -> None:
    """`qm mcp`: serve the tools on stdin/stdout as the agent `qm run` started."""
    await build_server().run_stdio_async()
