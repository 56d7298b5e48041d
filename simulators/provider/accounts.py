"""Identity endpoints: `POST /accounts/lookup` and `POST /accounts` (new account from an assertion plus
evidence that the human accepted the current terms)."""

from __future__ import annotations

import secrets
import sqlite3
import time
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from simulators.provider.catalogs import ACCOUNT_SCOPE
from simulators.provider.context import ContractError, Outcome, context_of, parse_json
from simulators.provider.store import token_hash


class LookupBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assertion: str = Field(min_length=1, max_length=4096)


class TermsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    terms_version: str = Field(min_length=1, max_length=64)
    accepted_at: AwareDatetime
    accepted_by: str = Field(min_length=1, max_length=128)
    approval_id: str = Field(min_length=1, max_length=128)


class CreateAccountBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assertion: str = Field(min_length=1, max_length=4096)
    terms: TermsBody


def new_account_token(provider: str) -> tuple[str, str]:
    """(token, token id) for an account-level credential."""
    return f"{provider}_acct_{secrets.token_urlsafe(32)}", f"tok_{secrets.token_hex(8)}"


async def lookup_account(request: Request) -> JSONResponse:
    """Does an account exist for the asserted email? The assertion is used up."""
    ctx = context_of(request)
    body = await parse_json(request, LookupBody)
    claims = await ctx.identity.verify(body.assertion)
    ctx.identity.consume(claims)
    return JSONResponse({"exists": ctx.store.account_by_email(claims.email) is not None})


async def create_account(request: Request) -> JSONResponse:
    """Create the account from the assertion; 403 `terms_acceptance_required` unless the evidence names
    the provider's current terms version."""
    ctx = context_of(request)
    body = await parse_json(request, CreateAccountBody)
    claims = await ctx.identity.verify(body.assertion)
    # a retry carries a fresh assertion: the request is the same when the attested human and terms are
    fingerprint = {"sub": claims.sub, "email": claims.email, "terms": body.terms.model_dump(mode="json")}

    async def work(key: str) -> Outcome:
        ctx.identity.consume(claims)
        if body.terms.accepted_at > datetime.now(body.terms.accepted_at.tzinfo):
            raise ContractError(400, "invalid_terms", "terms.accepted_at is in the future")
        current = ctx.catalog.provider.terms_version
        if body.terms.terms_version != current:
            raise ContractError(
                403, "terms_acceptance_required", f"the human must accept terms version {current}"
            )
        email = claims.email.strip().lower()
        if ctx.store.account_by_email(email) is not None:
            raise ContractError(
                409, "account_exists", "an account exists for this identity: link it with OAuth"
            )
        account_id = f"acct_{secrets.token_hex(8)}"
        token, token_id = new_account_token(ctx.provider)
        now = int(time.time())
        terms = body.terms

        def apply(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO accounts (account_id, email, subject, display_name, created_at, origin, "
                "terms_version, terms_accepted_at, terms_accepted_by, terms_approval_id) "
                "VALUES (?, ?, ?, ?, ?, 'assertion', ?, ?, ?, ?)",
                (account_id, email, claims.sub, None, now, terms.terms_version,
                 terms.accepted_at.isoformat(), terms.accepted_by, terms.approval_id),
            )  # fmt: skip
            db.execute(
                "INSERT INTO tokens (token_hash, token_id, kind, account_id, client_id, scopes, source, "
                "created_at) VALUES (?, ?, 'account', ?, ?, ?, 'accounts', ?)",
                (token_hash(token), token_id, account_id, ctx.config.client_id, ACCOUNT_SCOPE, now),
            )

        result = {
            "account_id": account_id,
            "link_action": "created",
            "credential": token,
            "token_type": "Bearer",
            "scopes": [ACCOUNT_SCOPE],
            "expires_at": None,
        }
        return 201, result, apply

    return await ctx.idempotent(request, scope="accounts", fingerprint=fingerprint, work=work)
