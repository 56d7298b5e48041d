"""API credentials for agents: mint (scopes within the service's, TTL capped) and revoke by id (like
RFC 7009: 200 whatever the state). Introspection (RFC 7662) is the authorization server's
(simulators.provider.oauth_server)."""

from __future__ import annotations

import secrets
import sqlite3
import time
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from simulators.provider.context import (
    ContractError,
    Outcome,
    context_of,
    parse_empty,
    parse_json,
    path_id,
)
from simulators.provider.resources import owned_resource
from simulators.provider.store import token_hash

MIN_TTL_SECONDS = 60


class MintBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resource_id: str = Field(min_length=1, max_length=64)
    #: empty: every scope the service offers
    scopes: list[str] = Field(default_factory=list, max_length=32)
    ttl_seconds: int = Field(default=3600, ge=1, le=10_000_000)


async def mint_credential(request: Request) -> JSONResponse:
    ctx = context_of(request)
    account_id = ctx.authenticate(request)["account_id"]
    body = await parse_json(request, MintBody)

    async def work(key: str) -> Outcome:
        resource = owned_resource(ctx, account_id, body.resource_id)
        if resource["status"] != "complete":
            raise ContractError(409, "resource_not_ready", f"the resource is {resource['status']}")
        offered = ctx.service(resource["service_id"]).scopes
        scopes = body.scopes or list(offered)
        if not set(scopes) <= set(offered):
            raise ContractError(400, "invalid_scope", "requested scopes exceed what the service offers")
        if body.ttl_seconds < MIN_TTL_SECONDS:
            raise ContractError(400, "invalid_request", f"ttl_seconds must be at least {MIN_TTL_SECONDS}")
        now = int(time.time())
        expires_at = now + min(body.ttl_seconds, ctx.config.max_credential_ttl_seconds)
        token = f"{ctx.provider}_sk_{secrets.token_urlsafe(32)}"
        credential_id = f"cred_{secrets.token_hex(8)}"

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO tokens (token_hash, token_id, kind, account_id, client_id, scopes, resource_id, "
                "source, created_at, expires_at) VALUES (?, ?, 'api', ?, ?, ?, ?, 'credentials', ?, ?)",
                (token_hash(token), credential_id, account_id, ctx.config.client_id, " ".join(scopes),
                 body.resource_id, now, expires_at),
            )  # fmt: skip

        result = {
            "credential_id": credential_id,
            "token": token,
            "token_type": "Bearer",
            "scopes": scopes,
            "expires_at": datetime.fromtimestamp(expires_at, UTC).isoformat(),
            "account_id": account_id,
            "resource_id": body.resource_id,
        }
        return 201, result, apply

    return await ctx.idempotent(request, scope=account_id, fingerprint=body.model_dump(), work=work)


async def revoke_credential(request: Request) -> JSONResponse:
    """RFC 7009: 200 whether the credential was active, already revoked or unknown to this account."""
    ctx = context_of(request)
    account_id = ctx.authenticate(request)["account_id"]
    credential_id = path_id(request, "credential_id")
    await parse_empty(request)
    async with ctx.write_lock:
        with ctx.store.transaction():
            ctx.store.execute(
                "UPDATE tokens SET revoked_at = ? WHERE token_id = ? AND account_id = ? AND kind = 'api' "
                "AND revoked_at IS NULL",
                int(time.time()), credential_id, account_id,
            )  # fmt: skip
    return JSONResponse({"credential_id": credential_id, "revoked": True})
