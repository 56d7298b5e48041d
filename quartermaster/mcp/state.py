"""The MCP server's lifespan state: where each tool call gets a `QuartermasterClient` acting as its caller.

- stdio (`qm mcp`): one client, built from what `qm run` injected (`QuartermasterClient.from_env()`);
- streamable HTTP (mounted in the API at `/mcp`): a client per request, built from the tokens that
  request presented (verified at the edge, verified again by the API), sharing one `httpx.AsyncClient`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from quartermaster.client import QuartermasterClient
from quartermaster.client.api import IDENTITY_HEADER

#: where the HTTP edge leaves the tokens it verified, in the ASGI scope of the request
SCOPE_KEY = "quartermaster.mcp.caller"


@dataclass(frozen=True)
class PresentedTokens:
    """An agent's tokens as one HTTP request presented them (never logged, never returned)."""

    session_token: str
    identity_token: str


@dataclass
class McpState:
    """What every tool reaches through `ctx.request_context.lifespan_context`."""

    #: the one client of a stdio server (the agent's own, from its environment)
    client: QuartermasterClient | None = None
    #: for HTTP: the API's base URL and a shared transport; a client per request's tokens
    base_url: str | None = None
    http: httpx.AsyncClient | None = None

    def client_for(self, request: Any) -> QuartermasterClient:
        """The client acting as the caller of this tool call."""
        if self.client is not None:
            return self.client
        tokens = _tokens_of(request)
        if tokens is None or self.base_url is None or self.http is None:
            # the HTTP edge refuses such a request before it gets here; never fall back to anyone
            from models.errors import ErrorCode
            from quartermaster.client import ApiError

            raise ApiError(ErrorCode.UNAUTHENTICATED, "no verified agent tokens on this request", status=401)
        return QuartermasterClient(
            self.base_url,
            session_token=tokens.session_token,
            identity_token=tokens.identity_token,
            http_client=self.http,  # shared: closing the per-request client leaves it open
        )


def _tokens_of(request: Any) -> PresentedTokens | None:
    scope = getattr(request, "scope", None)
    if not isinstance(scope, dict):
        return None
    tokens = scope.get(SCOPE_KEY)
    return tokens if isinstance(tokens, PresentedTokens) else None


def from_env_lifespan() -> Callable[[Any], AbstractAsyncContextManager[McpState]]:
    """stdio: the agent's own client from what `qm run` injected."""

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[McpState]:
        async with QuartermasterClient.from_env() as qm:
            yield McpState(client=qm)

    return lifespan


def per_request_lifespan(
    base_url: str, http_factory: Callable[[], httpx.AsyncClient]
) -> Callable[[Any], AbstractAsyncContextManager[McpState]]:
    """HTTP: one shared transport to the API; each tool call acts with its request's tokens."""

    @asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[McpState]:
        async with http_factory() as http:
            yield McpState(base_url=base_url, http=http)

    return lifespan


__all__ = ["IDENTITY_HEADER", "SCOPE_KEY", "McpState", "PresentedTokens"]
