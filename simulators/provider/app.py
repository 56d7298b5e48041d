"""The simulated provider as a Starlette ASGI app: `create_app(config)`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Scope

from quartermaster.http_transport import close_pooled_connections
from simulators.provider import accounts, admin, credentials, oauth, resources
from simulators.provider.catalogs import catalog_for
from simulators.provider.config import SimulatorConfig
from simulators.provider.context import (
    ContractError,
    SimulatorContext,
    client_secret,
    context_of,
    error_response,
)
from simulators.provider.faults import FaultMiddleware
from simulators.provider.identity import IdentityError, IdentityVerifier
from simulators.provider.oauth_server import SimClient, new_server
from simulators.provider.store import SimulatorStore


async def get_catalog(request: Request) -> JSONResponse:
    return JSONResponse(context_of(request).catalog.model_dump(mode="json"))


ROUTES = [
    Route("/catalog", get_catalog, methods=["GET"], name="catalog"),
    Route("/accounts/lookup", accounts.lookup_account, methods=["POST"], name="lookup_account"),
    Route("/accounts", accounts.create_account, methods=["POST"], name="create_account"),
    Route("/oauth/authorize", oauth.authorize_page, methods=["GET"], name="authorize"),
    Route("/oauth/authorize", oauth.authorize_decision, methods=["POST"], name="authorize_decision"),
    Route("/oauth/token", oauth.token, methods=["POST"], name="token"),
    Route("/oauth/revoke", oauth.revoke, methods=["POST"], name="revoke_token"),
    Route(
        "/.well-known/oauth-authorization-server",
        oauth.server_metadata,
        methods=["GET"],
        name="authorization_server_metadata",
    ),
    Route("/resources", resources.create_resource, methods=["POST"], name="create_resource"),
    Route("/resources/{resource_id}", resources.get_resource, methods=["GET"], name="get_resource"),
    Route(
        "/resources/{resource_id}/submit_information",
        resources.submit_information,
        methods=["POST"],
        name="submit_information",
    ),
    Route(
        "/resources/{resource_id}/remove", resources.remove_resource, methods=["POST"], name="remove_resource"
    ),
    Route("/resources/{resource_id}/plan", resources.change_plan, methods=["POST"], name="change_plan"),
    Route(
        "/resources/{resource_id}/renew", resources.renew_resource, methods=["POST"], name="renew_resource"
    ),
    Route("/credentials", credentials.mint_credential, methods=["POST"], name="mint_credential"),
    Route(
        "/credentials/{credential_id}/revoke",
        credentials.revoke_credential,
        methods=["POST"],
        name="revoke_credential",
    ),
    Route("/introspect", oauth.introspect, methods=["POST"], name="introspect"),
    Route("/_sim/accounts", admin.seed_account, methods=["POST"]),
    Route("/_sim/state", admin.state, methods=["GET"]),
    Route("/_sim/faults", admin.add_fault, methods=["POST"]),
    Route("/_sim/faults", admin.clear_faults, methods=["DELETE"]),
]


async def _contract_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ContractError)
    return error_response(exc)


async def _identity_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, IdentityError)
    return error_response(ContractError(exc.status, exc.code, exc.message))


def allowed_methods(scope: Scope) -> str:
    """Every method some route serves at this path (a path can be split over several routes)."""
    methods: set[str] = set()
    for route in ROUTES:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    headers = {"Allow": allowed_methods(request.scope)} if exc.status_code == 405 else None
    return error_response(ContractError(exc.status_code, code, "no such operation", headers))


async def _internal_error(request: Request, exc: Exception) -> Response:
    return error_response(ContractError(500, "internal_error", "the provider failed unexpectedly"))


def create_app(config: SimulatorConfig) -> Starlette:
    """A simulated provider (`config.provider` is `cloud`, `db` or `mail`) with its state in
    `<data_dir>/providers/<provider>.sqlite`."""
    catalog = catalog_for(config.provider)
    store = SimulatorStore(config.db_path)
    http_client = config.http_client or httpx.AsyncClient()
    identity = IdentityVerifier(
        jwks_url=config.resolved_jwks_url,
        issuer=config.issuer,
        audience=config.provider,
        http_client=http_client,
        store=store,
    )
    ctx = SimulatorContext(config=config, store=store, catalog=catalog, identity=identity)
    client = SimClient(
        client_id=config.client_id, client_secret=client_secret(config), redirect_uri=config.redirect_uri
    )
    ctx.oauth = new_server(
        store=store, client=client, provider=config.provider, catalog=catalog,
        access_ttl=config.access_token_ttl_seconds,
    )  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if config.http_client is None:
                await http_client.aclose()
            await close_pooled_connections()  # this loop's share of the shared charger's pool
            store.close()

    app = Starlette(
        routes=ROUTES,
        lifespan=lifespan,
        exception_handlers={
            ContractError: _contract_error,
            IdentityError: _identity_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.ctx = ctx
    app.add_middleware(FaultMiddleware, book=ctx.faults, routes=ROUTES)
    return app
