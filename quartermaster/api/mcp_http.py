"""The MCP server's streamable HTTP transport, served by the API at `/mcp`.

The edge verifies the agent exactly as every API route does (session token as the bearer, identity
token in `X-QM-Identity`), answers 401 with `WWW-Authenticate: Bearer ... resource_metadata=` pointing
at the API's RFC 9728 metadata, and hands the MCP server only the presented tokens. The tools then act
as that agent: each builds a `QuartermasterClient` from those tokens and calls the API through
`httpx.ASGITransport` into this same app, where the routes verify and authorize again. The MCP server
itself (`quartermaster.mcp`) stays caller side: it holds no key and never sees the API's services.

Stateless mode with JSON responses: no MCP session outlives a request, so nothing one agent opened can
be reused by another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from fastapi.security import HTTPAuthorizationCredentials
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from models.errors import ErrorCode, QuartermasterError
from quartermaster.api.deps import IDENTITY_HEADER, Agent, optional_caller
from quartermaster.api.errors import error_response, http_status
from quartermaster.api.routes.mcp import WELL_KNOWN
from quartermaster.mcp import build_server
from quartermaster.mcp.state import SCOPE_KEY, PresentedTokens, per_request_lifespan

MCP_PATH = "/mcp"
#: the base URL the tools' clients use inside the process (requests never leave it)
INTERNAL_BASE_URL = "http://quartermaster-api.internal"
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]", "::1")


class McpEdge:
    """ASGI app at `/mcp`: authenticate the agent, then pass the request to the MCP transport."""

    def __init__(self, api: FastAPI) -> None:
        self.api = api
        self.server = build_server(
            per_request_lifespan(
                INTERNAL_BASE_URL,
                lambda: httpx.AsyncClient(transport=httpx.ASGITransport(app=api), timeout=60),
            )
        )
        self.transport = self.server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            stateless_http=True,
            json_response=True,
            # Host/Origin are checked here against the API's public URL (the SDK's default allows
            # loopback only)
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The transport's task group and the tools' shared HTTP client, for the API's lifespan."""
        async with self.server.session_manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        svc = self.api.state.services
        public = svc.settings.public_url.rstrip("/")
        headers = Headers(scope=scope)
        try:
            _check_origin(headers.get("origin"), public)
            tokens = await self._authenticate(headers)
        except QuartermasterError as err:
            extra = None
            if http_status(err.code) == 401:
                presented = headers.get("authorization") is not None
                error = ', error="invalid_token"' if presented else ""
                extra = {
                    "WWW-Authenticate": f'Bearer realm="quartermaster"{error}, '
                    f'resource_metadata="{public}{WELL_KNOWN}"'
                }
            await error_response(err.code, err.message, extra)(scope, receive, send)
            return
        await self.transport({**scope, SCOPE_KEY: tokens}, receive, send)

    async def _authenticate(self, headers: Headers) -> PresentedTokens:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise QuartermasterError(
                ErrorCode.UNAUTHENTICATED,
                "present the agent's session token as the bearer and its identity token in "
                + IDENTITY_HEADER,
            )
        identity = headers.get(IDENTITY_HEADER)
        caller = await optional_caller(
            self.api.state.services,
            HTTPAuthorizationCredentials(scheme="Bearer", credentials=token.strip()),
            identity,
        )
        if not isinstance(caller, Agent):
            raise QuartermasterError(ErrorCode.FORBIDDEN, "the MCP tools act for an agent under a session")
        return PresentedTokens(
            session_token=caller.session_token.reveal(), identity_token=caller.identity_token.reveal()
        )


def _check_origin(origin: str | None, public_url: str) -> None:
    """A browser page on another origin may not drive the tools (DNS rebinding, cross-site requests)."""
    if origin is None:
        return
    got, want = urlsplit(origin), urlsplit(public_url)
    if (got.scheme, got.netloc) == (want.scheme, want.netloc) or got.hostname in _LOOPBACK:
        return
    raise QuartermasterError(ErrorCode.FORBIDDEN, "requests from this origin are not accepted")
