"""The API's shape: the committed OpenAPI document matches the code; every route declares who may call
it and refuses an unauthenticated (and, for human routes, an agent) caller; bounded input; the SDK
imports nothing of the server side."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
from fastapi.routing import APIRoute

from quartermaster.api.app import PAGE_ROUTERS, PROTECTED_ROUTERS, PUBLIC_ROUTERS, create_app
from quartermaster.api.deps import optional_caller, require_caller, require_human, services
from quartermaster.api.routes import dev
from quartermaster.api.routes.pages import optional_page_session
from tests.fixtures.stack import Stack, new_email

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "api.openapi.json"


def current_document() -> dict[str, object]:
    return create_app(dev_routes=False).openapi()


def test_committed_openapi_matches_the_code() -> None:
    """Regenerate with: .venv/bin/python -m quartermaster.api.openapi > docs/api.openapi.json"""
    assert json.loads(OPENAPI.read_text()) == json.loads(json.dumps(current_document())), (
        "docs/api.openapi.json drifted: run .venv/bin/python -m quartermaster.api.openapi"
    )
    assert str(current_document()["openapi"]).startswith("3.1")


def _deps(route: APIRoute) -> set[object]:
    out: set[object] = set()
    todo = [route.dependant]
    while todo:
        d = todo.pop()
        out.add(d.call)
        todo.extend(d.dependencies)
    return out


def test_every_route_declares_its_callers() -> None:
    app = create_app(dev_routes=True)
    # every route comes from a router below; at the top level only FastAPI's own documentation and the
    # MCP endpoint, which authenticates every request at its own edge (tests/mcp/test_mcp_attacker.py)
    top = {getattr(r, "path", None) for r in app.routes if not type(r).__name__.startswith("_Included")}
    assert top <= {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/mcp"}, top
    routes = [r for router in (*PUBLIC_ROUTERS, *PROTECTED_ROUTERS, dev.router) for r in router.routes]
    # the HTML pages: authenticated by the page-session cookie (an approval link or /login)
    for route in (r for router in PAGE_ROUTERS for r in router.routes):
        assert isinstance(route, APIRoute) and optional_page_session in _deps(route), route
    pages = {getattr(r, "path", "") for router in PAGE_ROUTERS for r in router.routes}
    assert pages == {"/login", "/login/verify", "/logout", "/approvals", "/approve/{approval_id}"}, pages
    assert {getattr(r, "path", "") for r in dev.pages_router.routes} == {"/dev/inbox"}
    assert all(isinstance(r, APIRoute) for r in routes) and len(routes) > 30
    for route in routes:
        assert isinstance(route, APIRoute)
        deps = _deps(route)
        assert deps & {require_caller, optional_caller, services}, route.path
    for router in PROTECTED_ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute), route
            assert require_caller in _deps(route), route.path
    public = {getattr(r, "path", "") for router in PUBLIC_ROUTERS for r in router.routes}
    assert public <= {
        "/v1/catalog",
        "/v1/quotes",
        "/v1/login",
        "/v1/login/verify",
        "/v1/logout",
        "/v1/whoami",
        "/.well-known/jwks.json",
        "/.well-known/jwks/agent-identity.json",
        "/.well-known/jwks/session.json",
        "/.well-known/oauth-protected-resource",
        "/oauth/callback",
        "/stripe/webhook",
        "/checkout/done",
        "/checkout/cancelled",
        "/healthz",
    }


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1234567890abcdef", path)


async def test_every_protected_route_refuses_anonymous_and_bad_tokens(stack: Stack) -> None:
    app = create_app(dev_routes=False)
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        for router in PROTECTED_ROUTERS:
            for route in router.routes:
                assert isinstance(route, APIRoute)
                for method in route.methods:
                    path = _concrete(route.path)
                    for headers in (
                        {},
                        {"Authorization": "Bearer qmh_forged"},
                        {"Authorization": "Bearer a.b.c"},
                    ):
                        r = await http.request(method, path, headers=headers, json={})
                        assert r.status_code == 401, (method, path, headers, r.text)
                        assert r.json()["error"]["code"] == "UNAUTHENTICATED"
                        assert r.headers["www-authenticate"].startswith("Bearer")
    assert app.openapi()


async def test_human_routes_refuse_agents(stack: Stack) -> None:
    email = new_email()
    async with await stack.login(email) as human:
        sid = await stack.open_session(human, email, "planner", allowed_services=["cloud/*"])
        agent = await stack.agent(human, "planner", sid)
    headers = agent._headers()
    routes = [r for router in PROTECTED_ROUTERS for r in router.routes]
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        for route in routes:
            if isinstance(route, APIRoute) and require_human in _deps(route):
                for method in route.methods:
                    r = await http.request(method, _concrete(route.path), headers=headers, json={})
                    assert r.status_code == 403 and r.json()["error"]["code"] == "FORBIDDEN", (
                        route.path,
                        r.text,
                    )
    await agent.aclose()


async def test_bad_bodies_get_stable_codes(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api_url) as http:
        big = await http.post(
            "/v1/quotes", content=b"{" + b" " * 1_100_000 + b"}", headers={"content-type": "application/json"}
        )
        assert big.status_code == 413 and big.json()["error"]["code"] == "BODY_TOO_LARGE"
        deep = await http.post(
            "/v1/quotes", content=b"[" * 60_000 + b"]" * 60_000, headers={"content-type": "application/json"}
        )
        assert deep.status_code == 400 and deep.json()["error"]["code"] == "INVALID_REQUEST"
        bad = await http.post(
            "/v1/quotes", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_REQUEST"
        unknown = await http.post("/v1/quotes", json={"service_id": "nope/x"})
        assert unknown.json()["error"]["code"] in ("UNKNOWN_PROVIDER", "UNKNOWN_SERVICE")
        negative = await http.post(
            "/v1/quotes", json={"service_id": "cloud/r2", "max_price": {"amount": -1, "currency": "usd"}}
        )
        assert negative.status_code == 400 and negative.json()["error"]["code"] == "INVALID_REQUEST"
        extra = await http.post("/v1/quotes", json={"service_id": "cloud/r2", "principal_email": "x@y.z"})
        assert extra.status_code == 400


def test_the_sdk_imports_nothing_of_the_server_side() -> None:
    code = (
        "import sys, quartermaster.client, quartermaster.cli\n"
        "server = ('temporalio', 'activities', 'providers', 'workflows')\n"
        "inner = ('quartermaster.api', 'quartermaster.orchestration', 'quartermaster.keys',"
        " 'quartermaster.codec')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in server or m.startswith(inner)]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_product_never_imports_the_simulators() -> None:
    code = (
        "import sys, worker, quartermaster.api.app, quartermaster.cli\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'simulators'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
