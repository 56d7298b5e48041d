"""Linking an existing account: OAuth 2.0 authorization code with PKCE S256 only (RFC 6749, 7636,
9700): a consent page for the human, exact redirect URI, single-use codes, refresh-token rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from simulators.provider.catalogs import ACCOUNT_SCOPE, all_scopes
from simulators.provider.context import ContractError, SimulatorContext, context_of, read_form
from simulators.provider.store import token_hash

CODE_TTL_SECONDS = 60
CONSENT_TTL_SECONDS = 600
VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;line-height:1.5}}
button{{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}}</style></head>
<body><h1>{title}</h1>{content}</body></html>"""


def _page(title: str, content: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=html.escape(title), content=content), status_code=status)


def _redirect(redirect_uri: str, **params: str) -> RedirectResponse:
    return RedirectResponse(f"{redirect_uri}?{urlencode(params)}", status_code=303)


async def authorize_page(request: Request) -> Response:
    """`GET /oauth/authorize`: checks client and redirect URI first (never redirect to an unchecked URI),
    then shows the consent page for the account named by `login_hint`."""
    ctx = context_of(request)
    q = request.query_params
    provider = html.escape(ctx.provider)
    if q.get("client_id") != ctx.config.client_id:
        return _page("Unknown application", "<p>This client is not registered.</p>", 400)
    redirect_uri = q.get("redirect_uri", "")
    if redirect_uri != ctx.config.redirect_uri:
        return _page("Invalid redirect", "<p>The redirect URI is not registered for this client.</p>", 400)
    state = q.get("state", "")
    if q.get("response_type") != "code":
        return _redirect(redirect_uri, error="unsupported_response_type", state=state)
    if q.get("code_challenge_method") != "S256" or not CHALLENGE.match(q.get("code_challenge", "")):
        return _redirect(
            redirect_uri, error="invalid_request", error_description="PKCE S256 is required", state=state
        )
    scopes = q.get("scope", "").split() or [ACCOUNT_SCOPE]
    if not set(scopes) <= all_scopes(ctx.catalog):
        return _redirect(redirect_uri, error="invalid_scope", state=state)
    account = ctx.store.account_by_email(q.get("login_hint", ""))
    if account is None:
        return _page("No account", f"<p>There is no {provider} account for this email.</p>", 404)
    request_id = secrets.token_urlsafe(24)
    params = {"redirect_uri": redirect_uri, "state": state, "scopes": scopes,
              "code_challenge": q["code_challenge"], "client_id": ctx.config.client_id}  # fmt: skip
    with ctx.store.transaction() as db:
        db.execute(
            "INSERT INTO oauth_requests (request_id, params, account_id, created_at) VALUES (?, ?, ?, ?)",
            (request_id, json.dumps(params), account["account_id"], int(time.time())),
        )
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
    """`POST /oauth/authorize`: the human's Approve / Deny; redirects to the registered URI."""
    ctx = context_of(request)
    form = await read_form(request)
    request_id, decision = form.get("request_id", ""), form.get("decision", "")
    now = int(time.time())
    with ctx.store.transaction() as db:
        row = db.execute("SELECT * FROM oauth_requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None or row["decided"] or row["created_at"] < now - CONSENT_TTL_SECONDS:
            return _page("Request expired", "<p>Start the link again from your agent.</p>", 400)
        db.execute("UPDATE oauth_requests SET decided = 1 WHERE request_id = ?", (request_id,))
        params = json.loads(row["params"])
        if decision != "approve":
            return _redirect(params["redirect_uri"], error="access_denied", state=params["state"])
        code = secrets.token_urlsafe(32)
        db.execute(
            "INSERT INTO oauth_codes (code_hash, account_id, client_id, redirect_uri, code_challenge, "
            "scopes, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (token_hash(code), row["account_id"], params["client_id"], params["redirect_uri"],
             params["code_challenge"], " ".join(params["scopes"]), now + CODE_TTL_SECONDS),
        )  # fmt: skip
    return _redirect(params["redirect_uri"], code=code, state=params["state"])


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _grant_error(message: str) -> ContractError:
    return ContractError(400, "invalid_grant", message)


def _issue(ctx: SimulatorContext, *, account_id: str, scopes: str, source: str) -> dict[str, Any]:
    """A new access + refresh token pair (inside the caller's transaction)."""
    access = f"{ctx.provider}_at_{secrets.token_urlsafe(32)}"
    refresh = f"{ctx.provider}_rt_{secrets.token_urlsafe(32)}"
    now, ttl = int(time.time()), ctx.config.access_token_ttl_seconds
    for token, kind, expires in ((access, "access", now + ttl), (refresh, "refresh", None)):
        ctx.store.execute(
            "INSERT INTO tokens (token_hash, token_id, kind, account_id, client_id, scopes, source, "
            "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            token_hash(token), f"tok_{secrets.token_hex(8)}", kind, account_id, ctx.config.client_id,
            scopes, source, now, expires,
        )  # fmt: skip
    account = ctx.store.account(account_id) or {}
    return {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl,
        "refresh_token": refresh,
        "scope": scopes,
        "account_id": account_id,
        "link_action": "linked_existing",
        # whose account this is: the client checks it is the person it asked for (login_hint is a hint)
        "primary_email": account.get("email", ""),
        "email_verified": True,
    }


async def token(request: Request) -> Response:
    """`POST /oauth/token` (form): `authorization_code` with `code_verifier`, or `refresh_token`."""
    ctx = context_of(request)
    field = await read_form(request)
    if field.get("client_id") != ctx.config.client_id:
        raise ContractError(401, "invalid_client", "unknown client")
    grant = field.get("grant_type")
    now = int(time.time())
    if grant not in ("authorization_code", "refresh_token"):
        raise ContractError(400, "unsupported_grant_type", "authorization_code or refresh_token only")
    # the refusals are returned, not raised, so that burning a code or revoking tokens still commits
    with ctx.store.transaction():
        if grant == "authorization_code":
            result = _redeem_code(ctx, field, now)
        else:
            result = _refresh(ctx, field, now)
    if isinstance(result, ContractError):
        raise result
    return JSONResponse(result, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def _refresh(ctx: SimulatorContext, field: dict[str, str], now: int) -> dict[str, Any] | ContractError:
    row = ctx.store.active_token(field.get("refresh_token", ""))
    if row is None or row["kind"] != "refresh" or row["client_id"] != ctx.config.client_id:
        return _grant_error("the refresh token is unknown, revoked or expired")
    # rotation: a refresh token works once (RFC 9700 section 4.14)
    ctx.store.execute("UPDATE tokens SET revoked_at = ? WHERE token_id = ?", now, row["token_id"])
    return _issue(ctx, account_id=row["account_id"], scopes=row["scopes"], source=row["source"])


def _redeem_code(ctx: SimulatorContext, field: dict[str, str], now: int) -> dict[str, Any] | ContractError:
    code_hash = token_hash(field.get("code", ""))
    row = ctx.store.one("SELECT * FROM oauth_codes WHERE code_hash = ?", code_hash)
    if row is None:
        return _grant_error("unknown authorization code")
    if row["used_at"] is not None:
        # a second use means the code leaked: revoke what the first use issued (RFC 6749 §4.1.2)
        ctx.store.execute(
            "UPDATE tokens SET revoked_at = ? WHERE source = ? AND revoked_at IS NULL",
            now, f"code:{code_hash}",
        )  # fmt: skip
        return _grant_error("the authorization code was already used")
    ctx.store.execute("UPDATE oauth_codes SET used_at = ? WHERE code_hash = ?", now, code_hash)
    if row["expires_at"] <= now:
        return _grant_error("the authorization code has expired")
    if field.get("redirect_uri") != row["redirect_uri"] or field.get("client_id") != row["client_id"]:
        return _grant_error("redirect_uri or client_id differs from the authorization request")
    verifier = field.get("code_verifier", "")
    if not VERIFIER.match(verifier) or not hmac.compare_digest(_s256(verifier), row["code_challenge"]):
        return _grant_error("the code_verifier does not match the code_challenge")
    return _issue(ctx, account_id=row["account_id"], scopes=row["scopes"], source=f"code:{code_hash}")
