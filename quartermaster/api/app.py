"""The FastAPI application: `create_app()` for `qm serve` (services built from the environment in the
lifespan), or `create_app(services)` for tests and embedding."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

from quartermaster import __version__
from quartermaster.api import errors
from quartermaster.api.limits import BoundedBody
from quartermaster.api.mcp_http import MCP_PATH, McpEdge
from quartermaster.api.routes import (
    agents,
    approvals,
    billing,
    callbacks,
    catalog,
    dev,
    identities,
    links,
    login,
    mcp,
    pages,
    provisions,
    resources,
    sessions,
)
from quartermaster.api.services import ApiServices
from quartermaster.http_transport import close_pooled_connections

#: routers open to anonymous callers (each still authenticates what it receives)
PUBLIC_ROUTERS = (catalog.router, login.router, callbacks.router, mcp.router)
#: HTML pages for browsers: authenticated by the page-session cookie (from an approval link or /login)
PAGE_ROUTERS = (pages.router,)
#: routers whose every route requires a verified caller
PROTECTED_ROUTERS = (
    provisions.router,
    approvals.router,
    resources.router,
    sessions.router,
    identities.router,
    agents.router,
    billing.router,
    links.router,
)


def preflight() -> None:
    """Before a replica serves anything (`qm serve`, `python -m quartermaster.api`): exit with one
    `KEYS_MISMATCH` line when its key file is not the one the deployment publishes."""
    from providers.private_files import private_directory
    from quartermaster.config import Settings
    from quartermaster.deployment_keys import start_or_refuse
    from quartermaster.keys import load_keyring
    from worker import build_store

    settings = Settings.from_env()
    keyring = load_keyring(settings.resolved_keys_file, create=settings.dev)
    private_directory(settings.data_dir)
    store = build_store(settings, keyring)
    try:
        start_or_refuse(store, keyring, role="api")
    finally:
        store.close()


def create_app(services: ApiServices | None = None, *, dev_routes: bool | None = None) -> FastAPI:
    """The API. Without `services`, they are built from the environment when the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if services is None:
            from quartermaster.api.services import build_services
            from quartermaster.config import Settings
            from quartermaster.keys import load_keyring
            from quartermaster.temporal import connect

            settings = Settings.from_env()
            keyring = load_keyring(settings.resolved_keys_file, create=settings.dev)
            temporal = await connect(settings, keyring)
            app.state.services = build_services(settings, keyring, temporal)
        try:
            async with mcp_edge.running():
                yield
        finally:
            await close_pooled_connections()  # the provider and Stripe clients the services hold

    app = FastAPI(
        title="Quartermaster API",
        version=__version__,
        summary="Agent-commerce provisioning: discovery, authorization, tokenized payment, approvals.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
    )
    if services is not None:
        app.state.services = services
    # the MCP tools over streamable HTTP, acting as the agent that presented its tokens (mcp_http.py)
    mcp_edge = McpEdge(app)
    app.router.routes.append(Route(MCP_PATH, endpoint=mcp_edge, include_in_schema=False))
    errors.install(app)
    for router in (*PUBLIC_ROUTERS, *PROTECTED_ROUTERS, *PAGE_ROUTERS):
        app.include_router(router)
    if dev_routes is None:
        dev_routes = services.settings.dev if services is not None else os.environ.get("QM_DEV") == "1"
    mount_dev = dev_routes
    if mount_dev:
        app.include_router(dev.router)
        app.include_router(dev.pages_router)
    app.add_middleware(BoundedBody)
    return app
