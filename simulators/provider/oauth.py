"""Linking an existing account over OAuth 2.0: the Starlette handlers in front of the authlib
authorization server (simulators.provider.oauth_server): the consent page for the human, the token,
revocation and introspection endpoints and the RFC 8414 metadata document."""

from __future__ import annotations

import html
import json
import secrets
import time
from urllib.parse import parse_qsl

from authlib.oauth2.rfc6749 import OAuth2Error
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from simulators.provider.context import SimulatorContext, context_of
from simulators.provider.oauth_server import FormRequest, OAuthServer, metadata

CONSENT_TTL_SECONDS = 600
FORM = "application/x-www-form-urlencoded"

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;line-height:1.5}}
button{{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}}</style></head>
<body><h1>{title}</h1>{content}</body></html>"""


def _page(title: str, content: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), content=content), status_code=status)


def oauth_error(status: int, error: str, description: str) -> JSONResponse:
    """An RFC 6749 §5.2 error for what happens before authlib sees the request."""
    return JSONResponse({"error": error, "error_description": description}, status_code=status,
                        headers={"Cache-Control": "no-store"})  # fmt: skip


def _server(ctx: SimulatorContext) -> OAuthServer:
    assert ctx.oauth is not None
    return ctx.oauth


async def _form_request(request: Request) -> FormRequest | JSONResponse:
    """The POSTed form as authlib's request, or `invalid_request` (not a form, not UTF-8)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != FORM:
        return oauth_error(400, "invalid_request", f"send {FORM}")
    try:
        pairs = parse_qsl((await request.body()).decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return oauth_error(400, "invalid_request", "the form is not valid")
    secret = [value for key, value in pairs if key == "client_secret"]
    if secret and ("authorization" in request.headers or not all(secret)):
        # one authentication method per request (RFC 6749 §2.3), and a secret is never empty
        return oauth_error(
            400, "invalid_request", "authenticate with HTTP Basic or a non-empty client_secret"
        )
    return FormRequest("POST", str(request.url), request.headers, pairs)


def _authorization_request(request: Request, pairs: list[tuple[str, str]]) -> FormRequest:
    return FormRequest("GET", str(request.url.replace(query="")), request.headers, pairs)


def _unredirectable(error: OAuth2Error) -> HTMLResponse:
    """An authorization error whose client or redirect URI is not verified: never redirect."""
    title = "Unknown application" if error.error == "invalid_client" else "Invalid request"
    return _page(title, f"<p>{html.escape(error.get_error_description() or error.error)}</p>", 400)


async def authorize_page(request: Request) -> Response:
    """`GET /oauth/authorize`: authlib checks client, redirect URI (first: an unchecked URI is never
    redirected to), response type, scope and PKCE S256; then the consent page for the account named
    by `login_hint`."""
    ctx = context_of(request)
    server = _server(ctx)
    pairs = list(request.query_params.multi_items())
    req = _authorization_request(request, pairs)
    try:
        server.get_consent_grant(req)
    except OAuth2Error as error:
        if error.redirect_uri:
            redirect: Response = server.handle_error_response(req, error)
            return redirect
        return _unredirectable(error)
    provider = html.escape(ctx.provider)
    account = ctx.store.account_by_email(req.payload.data.get("login_hint", ""))
    if account is None:
        return _page("No account", f"<p>There is no {provider} account for this email.</p>", 404)
    request_id = secrets.token_urlsafe(24)
    with ctx.store.transaction() as db:
        db.execute(
            "INSERT INTO oauth_requests (request_id, params, account_id, created_at) VALUES (?, ?, ?, ?)",
            (request_id, json.dumps(pairs), account["account_id"], int(time.time())),
        )
    scopes = (req.scope or "").split() or [server.client.get_allowed_scope(None)]
    scope_items = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in scopes)
    content = (
        f"<p><strong>Quartermaster</strong> asks to act on your {provider} account "
        f"<strong>{html.escape(account['email'])}</strong> with:</p><ul>{scope_items}</ul>"
        f'<form method="post" action="/oauth/authorize">'
        f'<input type="hidden" name="request_id" value="{html.escape(request_id)}">'
        f'<button type="submit" name="decision" value="approve" id="approve">Approve</button>'
        f'<button type="submit" name="decision" value="deny" id="deny">Deny</button></form>'
    )
    return _page(f"Link your {provider} account", content)


async def authorize_decision(request: Request) -> Response:
    """`POST /oauth/authorize`: the human's Approve / Deny; authlib redirects to the registered URI
    with a code or `error=access_denied`."""
    ctx = context_of(request)
    server = _server(ctx)
    form = await _form_request(request)
    if isinstance(form, JSONResponse):
        return _page("Request expired", "<p>Start the link again from your agent.</p>", 400)
    request_id, decision = form.form.get("request_id", ""), form.form.get("decision", "")
    now = int(time.time())
    with ctx.store.transaction() as db:
        row = db.execute("SELECT * FROM oauth_requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None or row["decided"] or row["created_at"] < now - CONSENT_TTL_SECONDS:
            return _page("Request expired", "<p>Start the link again from your agent.</p>", 400)
        db.execute("UPDATE oauth_requests SET decided = 1 WHERE request_id = ?", (request_id,))
        req = _authorization_request(request, [tuple(p) for p in json.loads(row["params"])])
        try:
            grant = server.get_consent_grant(req)
        except OAuth2Error as error:  # the client's registration changed since the page was shown
            return _unredirectable(error)
        user = ctx.store.account(row["account_id"]) if decision == "approve" else None
        response: Response = server.create_authorization_response(req, grant_user=user, grant=grant)
    return response


async def token(request: Request) -> Response:
    """`POST /oauth/token`: `authorization_code` (with `code_verifier`) or `refresh_token`."""
    ctx = context_of(request)
    form = await _form_request(request)
    if isinstance(form, JSONResponse):
        return form
    # refusals are responses, not exceptions: burning a code or revoking a grant still commits
    async with ctx.write_lock:
        with ctx.store.transaction():
            response: Response = _server(ctx).create_token_response(form)
    return response


async def _endpoint(request: Request, name: str) -> Response:
    ctx = context_of(request)
    form = await _form_request(request)
    if isinstance(form, JSONResponse):
        return form
    async with ctx.write_lock:
        with ctx.store.transaction():
            response: Response = _server(ctx).create_endpoint_response(name, form)
    return response


async def revoke(request: Request) -> Response:
    """`POST /oauth/revoke` (RFC 7009)."""
    return await _endpoint(request, "revocation")


async def introspect(request: Request) -> Response:
    """`POST /introspect` (RFC 7662): the registered client, authenticated with its secret."""
    return await _endpoint(request, "introspection")


async def server_metadata(request: Request) -> JSONResponse:
    """`GET /.well-known/oauth-authorization-server` (RFC 8414)."""
    issuer = str(request.base_url).rstrip("/")
    return JSONResponse(metadata(_server(context_of(request)), issuer))
